"""A compression job whose model is larger than memory: the layer walk streams the decoder layers
from the checkpoint's safetensors shards (core/streaming.py) and writes ``hf/`` shard by shard.

``compress`` hands a job here when ``stream_folder(spec)`` names a folder: the model is a local
folder (or a hub id in the local cache) of safetensors weights and either ``SPRUCE_STREAM=1`` or
its weights exceed ``STREAM_FRACTION`` of the memory available now (``SPRUCE_STREAM=0``: never).

What a streamed job does not do, as each needs every layer in memory at once: the dense and
sparse evaluation (the report's ``perplexity`` is empty and ``streamed.skipped`` says so), OWL's
allocation and the linear walk (such a spec is not streamed), and ``compact/``. It prunes with the
layer walk, checkpoints and resumes like ``compress``, and writes ``hf/``, its model card and
``report.json``; the sparsity summary is counted as each layer is written.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spruce.core import report as rep
from spruce.core.arch import arch_for, count_params, decoder_layers, layer_linears
from spruce.core.builtins import builtin_for
from spruce.core.card import write_card
from spruce.core.checkpoint import Checkpoint, Saver, load_resume, resume_report, resumed_batches, resumes
from spruce.core.data import batched, calibration_ids
from spruce.core.dense_stream import DenseStream
from spruce.core.export import dense_bytes
from spruce.core.layer_walk import LayerWalk
from spruce.core.models import LoadedModel, dtype_name
from spruce.core.precision import forward_precision, resolve_precision, walk_attention
from spruce.core.progress import ProgressFn, Run, StopFn
from spruce.core.sparsity import sparsity_summary, weight_counts
from spruce.core.spec import CompressionSpec
from spruce.core.streaming import LayerStream, ShardReader, ShardWriter, empty_model
from spruce.core.walker import capture_inputs, walk

log = logging.getLogger(__name__)

# Stream when the weights exceed this share of MemAvailable: the walk also holds activations,
# statistics and one layer's float32 scores beside the weights.
STREAM_FRACTION = 0.5


def stream_folder(spec: CompressionSpec) -> Path | None:
    """The safetensors folder to stream ``spec.model`` from, or None to load it whole."""
    wanted = os.environ.get("SPRUCE_STREAM", "")
    if wanted == "0":
        return None
    folder = _local_folder(spec.model)
    if folder is None or not any(folder.glob("*.safetensors")):
        return None
    why_not = unstreamable(spec)
    size = ShardReader(folder).nbytes()
    if wanted != "1" and size <= STREAM_FRACTION * _available_bytes():
        return None
    if why_not is not None:
        log.warning("%s (%d MB) is not streamed: %s", spec.model, size >> 20, why_not)
        return None
    return folder


def unstreamable(spec: CompressionSpec) -> str | None:
    """Why ``spec`` cannot run streamed, or None."""
    if spec.allocation == "owl":
        return "OWL's allocation reads every layer before pruning"
    if spec.resolve().sequential == "linear":
        return "the linear walk is not streamed (method.sequential 'layer' or 'auto' is)"
    return None


def _local_folder(ref: str) -> Path | None:
    if builtin_for(ref.strip()) is not None:  # (load_model reads an alias before a folder)
        return None
    path = Path(ref.strip()).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(ref.strip(), "config.json")
    except Exception:  # not a hub id at all (a path, an alias): nothing to stream from
        return None
    return Path(found).parent if isinstance(found, str) else None


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    return 1 << 62  # (no /proc: never stream automatically)


class _CountingStream(LayerStream):
    """A ``LayerStream`` that counts each pruned layer's zeros before it is written and freed."""

    def __init__(self, *args: Any, spec: CompressionSpec, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spec = spec
        self.per_linear: dict[int, list[tuple[int, int, bool]]] = {}  # layer -> (zeros, numel, N:M ok)

    def release(self, i: int, layer: nn.Module) -> None:
        self.per_linear[i] = [
            weight_counts(lin.weight.data, self.spec.sparsity)
            for lin in layer_linears(layer, self.arch).values()
        ]
        super().release(i, layer)


def compress_streamed(
    spec: CompressionSpec,
    folder: Path,
    *,
    device: str | torch.device = "cpu",
    out_dir: Path | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    checkpoint: Checkpoint | None = None,
) -> dict[str, Any]:
    """``compress(spec, ...)`` for the safetensors checkpoint in ``folder``, one decoder layer in
    memory at a time; returns the report's data. Without ``out_dir`` the pruned layers are counted
    and dropped."""
    from transformers import AutoTokenizer

    spec.validate()
    why_not = unstreamable(spec)
    if why_not is not None:
        raise ValueError(f"this job cannot stream: {why_not}")
    device = torch.device(device)
    run = Run(on_progress, should_stop)
    started = time.time()
    generator = torch.Generator().manual_seed(spec.calibration.seed)  # as compress: checkpointed

    with run.stage("load"):
        reader = ShardReader(folder)
        model = empty_model(folder, reader, dtype=spec.dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    arch = arch_for(model)
    model_dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    n_layers = len(decoder_layers(model, arch))
    meta = {
        "ref": spec.model, "resolved": str(Path(folder).resolve()), "source": "folder",
        "model_type": model.config.model_type, "params": count_params(model), "layers": n_layers,
        "dtype": dtype_name(model_dtype),
    }  # fmt: skip
    loaded = LoadedModel(model=model, tokenizer=tokenizer, arch=arch, meta=meta)

    with run.stage("calibration"):
        calib, calib_info = calibration_ids(tokenizer, spec.calibration)
    token_batches = batched(calib, spec.batch_size)
    with warnings.catch_warnings():  # its copy into the meta layers is a no-op: they are written below
        warnings.filterwarnings("ignore", ".*copying from a non-meta parameter", UserWarning)
        resume = load_resume(checkpoint, model, arch, generator, run, [tuple(t.shape) for t in token_batches])
    prior: dict[str, Any] = resume.last.meta if resume is not None else {}
    precision = resolve_precision(spec.compute_dtype, model_dtype=model_dtype, device=device, arch=arch,
                                  fits_dense_model=spec.fits_dense_model)  # fmt: skip
    ratios: list[float] = list(prior.get("ratios", [spec.sparsity.ratio] * n_layers))

    writer = ShardWriter(Path(out_dir) / "hf") if out_dir is not None else None
    layers = _CountingStream(model, arch, reader, writer, spec=spec)
    saver = None
    if checkpoint is not None:
        fixed: dict[str, Any] = {
            "dense": {"perplexity": {}},
            "ratios": ratios,
            "outliers": None,
            "resumes": resumes(resume),
        }
        saver = Saver(checkpoint, model, arch, generator, run, fixed, started, prior.get("elapsed", 0.0))
    with run.stage("prune"), forward_precision(precision), walk_attention(model, spec.attention):
        stream = DenseStream(spec)
        strategy = LayerWalk(arch, spec, device=device, generator=generator, ratios=ratios, stream=stream,
                             prior=prior, save=saver)  # fmt: skip
        batches = capture_inputs(model, arch, token_batches, device=device)
        start = 0
        if resume is not None:
            start = resume.next_layer
            batches, stream.hidden = resumed_batches(batches, resume, start, stream.active)
            for i in range(start):  # the layers pruned before the interruption, from the checkpoint
                _write_resumed(layers, model, i, resume.weights[i])
        elif stream.active:
            stream.hidden = [b.hidden for b in batches]
        walk(model, arch, batches, device=device, visit=strategy.visit, should_stop=run.stop_fn(),
             on_layer=lambda i, n: run.progress("prune", i / n, i, n), on_outputs=strategy.on_outputs,
             start=start, layers=layers)  # fmt: skip
        del batches
    peak_after_prune = rep.peak_rss_bytes()

    counts = [c for i in sorted(layers.per_linear) for c in layers.per_linear[i]]
    data = rep.build(
        spec=spec, loaded=loaded, calibration=calib_info, evaluation={}, dense_ppl={}, sparse_ppl={},
        layers=[r.to_dict() for r in strategy.records], sparsity=sparsity_summary(counts, spec.sparsity),
        outliers=None, factorization=strategy.fact, device=str(device),
    )  # fmt: skip
    data["streamed"] = {"skipped": ["evaluate_dense", "evaluate_sparse", "compact"]}
    data["sequential"] = "layer"
    data["compute_dtype"] = dtype_name(precision.dtype if precision else model_dtype)
    data["resumed"] = resume is not None
    data["resume"] = resume_report(resume)
    data["sizes"] = {"dense_bytes": dense_bytes(model)}  # (meta parameters have sizes too)
    if writer is not None:
        assert out_dir is not None
        with run.stage("export"):
            data["sizes"]["hf_bytes"] = writer.finish(model, arch, tokenizer)
            data["dtype_out"] = dtype_name(model_dtype)
    data["timings"] = {k: round(v, 3) for k, v in run.timings.items()}
    data["timings"]["total"] = round(time.time() - started + prior.get("elapsed", 0.0), 3)
    data["peak_rss_after_prune_bytes"] = peak_after_prune
    data["peak_rss_bytes"] = rep.peak_rss_bytes()
    if out_dir is not None:
        rep.write(data, Path(out_dir) / "report.json")
        write_card(data, Path(out_dir) / "hf")
    run.progress("export", 1.0)
    return data


def _write_resumed(
    layers: _CountingStream, model: nn.Module, i: int, weights: dict[str, torch.Tensor]
) -> None:
    """Layer ``i`` as the interrupted run pruned it: counted and written like a walked layer."""
    layer = decoder_layers(model, layers.arch)[i]
    layers.load(i, layer, weights)
    layers.release(i, layer)
