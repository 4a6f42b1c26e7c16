"""``compress``: the engine's one entry point, used by the worker and the CLI alike.

load -> calibration text -> dense perplexity -> (OWL allocation) -> layer walk: for each decoder
layer (induce) -> statistics -> prune -> propagate -> sparse perplexity -> export + report.json.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spruce.core import lmeval
from spruce.core import report as rep
from spruce.core.arch import ArchSpec, decoder_layers, layer_linears
from spruce.core.card import write_card
from spruce.core.checkpoint import (
    Checkpoint,
    ResumeState,
    Saver,
    load_resume,
    resume_report,
    resumed_batches,
    resumes,
)
from spruce.core.data import batched, calibration_ids, evaluation_ids
from spruce.core.dense_stream import DenseStream
from spruce.core.evaluate import ModelEvaluation, evaluate_model, evaluation_report
from spruce.core.export import dense_bytes, save_compact, save_hf
from spruce.core.heap import fix_mmap_threshold
from spruce.core.layer_walk import LayerWalk
from spruce.core.linear_walk import LinearWalk
from spruce.core.models import LoadedModel, dtype_name, load_model
from spruce.core.owl import outlier_ratio, owl_ratios
from spruce.core.passes import collect_stats
from spruce.core.precision import forward_precision, resolve_precision, walk_attention
from spruce.core.progress import ProgressFn, Run, StopFn
from spruce.core.pruners import wanda_scores
from spruce.core.report import RESULT_KEYS, LayerRecord
from spruce.core.sparsity import sparsity_summary, weight_counts
from spruce.core.spec import IN_FORWARD_BYTES, CompressionSpec
from spruce.core.stream_job import compress_streamed, stream_folder
from spruce.core.walker import LayerBatch, capture_inputs, walk

log = logging.getLogger(__name__)


@dataclass
class Report:
    """Everything a run measured; ``to_dict()`` is the content of report.json."""

    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return self.data

    @property
    def summary(self) -> dict[str, Any]:
        """The results the service stores on the job row."""
        return {k: self.data.get(k) for k in RESULT_KEYS}


def compress(
    spec: CompressionSpec,
    *,
    device: str | torch.device = "cpu",
    out_dir: Path | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    cache_dir: Path | None = None,
    checkpoint: Checkpoint | None = None,
) -> Report:
    """Prune ``spec.model`` to ``spec.sparsity`` and return the report.

    ``device`` receives one decoder layer at a time; the model itself stays on the CPU.
    ``on_progress`` is called with a never-decreasing ``Progress``; ``should_stop`` is checked
    between layers and stages and ends the run with ``core.errors.Cancelled``. With ``out_dir``
    set, the HF folder (``hf/``), the compact sparse artifact (``compact/``) and ``report.json``
    are written there. With ``checkpoint`` set, every finished layer is saved to it and a run
    that finds a saved state continues after its last layer, with the same result as a run that
    was never interrupted (see core/checkpoint.py); the report's ``resume`` says so.
    """
    spec.validate()
    rep.reset_peak_rss()  # a worker runs job after job: the report's peak is this job's
    fix_mmap_threshold()  # before any model is built: core/heap.py
    folder = stream_folder(spec)  # a model larger than memory: one layer at a time (core/stream_job.py)
    if folder is not None:
        data = compress_streamed(spec, folder, device=device, out_dir=out_dir, on_progress=on_progress,
                                 should_stop=should_stop, checkpoint=checkpoint)  # fmt: skip
        return Report(data)
    device = torch.device(device)
    run = Run(on_progress, should_stop)
    started = time.time()
    # One seeded generator for the whole run (induction's shuffling): its state is checkpointed,
    # so a resumed run draws exactly what the interrupted one would have drawn.
    generator = torch.Generator().manual_seed(spec.calibration.seed)

    with run.stage("load"):
        tasks = (
            lmeval.resolve(spec.evaluation.tasks) if spec.evaluation.tasks else None
        )  # fails before pruning
        loaded = load_model(spec.model, dtype=spec.dtype, cache_dir=cache_dir)
    model, arch = loaded.model, loaded.arch
    model_dtype = next(model.parameters()).dtype  # spec.dtype, or the checkpoint's with "auto"
    n_layers = len(decoder_layers(model, arch))

    with run.stage("calibration"):
        calib, calib_info = calibration_ids(loaded.tokenizer, spec.calibration)
        evals = {
            src: evaluation_ids(loaded.tokenizer, src, field=spec.calibration.field)
            for src in spec.evaluation.sources
            if src != "none"
        }
    in_forward = _prunes_in_forward(spec, loaded, calib)
    token_shapes = [tuple(ids.shape) for ids in batched(calib, _calib_batch_size(spec, calib, in_forward))]
    resume = load_resume(checkpoint, model, arch, generator, run, token_shapes)
    prior: dict[str, Any] = resume.last.meta if resume is not None else {}

    # Measured on the dense model: a resumed run's model is half pruned, so these come from the
    # checkpoint instead of being measured again.
    dense = ModelEvaluation.from_dict(prior.get("dense") or {"perplexity": prior.get("dense_ppl", {})})
    if spec.evaluation.dense and resume is None:
        with run.stage("evaluate_dense"):
            dense = evaluate_model(loaded, evals, spec.evaluation, tasks=tasks, device=device, run=run,
                                   stage="evaluate_dense")  # fmt: skip

    precision = resolve_precision(
        spec.compute_dtype,
        model_dtype=model_dtype,
        device=device,
        arch=arch,
        fits_dense_model=spec.fits_dense_model,
    )
    ratios: list[float] = list(prior.get("ratios", [spec.sparsity.ratio] * n_layers))
    outliers: list[float] | None = prior.get("outliers")
    if spec.allocation == "owl" and resume is None:
        with run.stage("allocate"), forward_precision(precision), walk_attention(model, spec.attention):
            outliers = _outlier_ratios(loaded, calib, spec, device, run)
            ratios = owl_ratios(outliers, spec.sparsity.ratio, spec.owl_lambda)

    saver = None
    if checkpoint is not None:
        fixed = {"dense": dense.to_dict(), "ratios": ratios, "outliers": outliers, "resumes": resumes(resume)}
        saver = Saver(checkpoint, model, arch, generator, run, fixed, started, prior.get("elapsed", 0.0))
    with run.stage("prune"), forward_precision(precision), walk_attention(model, spec.attention):
        records, fact = _prune_layers(
            loaded, calib, ratios, spec, device, run, generator, resume, saver, in_forward=in_forward
        )
    layer_rows = [r.to_dict() for r in records]
    peak_after_prune = rep.peak_rss_bytes()

    with run.stage("evaluate_sparse"):
        sparse = evaluate_model(loaded, evals, spec.evaluation, tasks=tasks, device=device, run=run,
                                stage="evaluate_sparse")  # fmt: skip

    data = rep.build(
        spec=spec,
        loaded=loaded,
        calibration=calib_info,
        evaluation={src: meta for src, (_, meta) in evals.items()},
        dense_ppl=dense.perplexity,
        sparse_ppl=sparse.perplexity,
        layers=layer_rows,
        sparsity=_sparsity_summary(model, arch, spec),
        outliers=outliers,
        factorization=fact,
        device=str(device),
    )
    data.update(evaluation_report(dense, sparse, tasks, spec.evaluation))
    data["sequential"] = "linear" if in_forward else "layer"
    data["compute_dtype"] = dtype_name(precision.dtype if precision else model_dtype)
    data["resumed"] = resume is not None
    data["resume"] = resume_report(resume)
    data["sizes"] = {"dense_bytes": dense_bytes(model)}
    if out_dir is not None:
        with run.stage("export"):
            out_dir = Path(out_dir)
            data["sizes"]["hf_bytes"] = save_hf(model, loaded.tokenizer, out_dir / "hf")
            data["dtype_out"] = dtype_name(model_dtype)  # hf/ keeps the model's dtype
            data["sizes"]["compact_bytes"] = save_compact(
                model, arch, out_dir / "compact", structure=_structure(spec), tokenizer=loaded.tokenizer
            )
    _split_prune_timing(run.timings, records)
    data["timings"] = {k: round(v, 3) for k, v in run.timings.items()}
    data["timings"]["total"] = round(time.time() - started + prior.get("elapsed", 0.0), 3)
    data["peak_rss_after_prune_bytes"] = peak_after_prune
    data["peak_rss_bytes"] = rep.peak_rss_bytes()
    report = Report(data)
    if out_dir is not None:
        rep.write(report.to_dict(), Path(out_dir) / "report.json")
        write_card(report.to_dict(), Path(out_dir) / "hf")  # hf/ alone tells how it was made
    run.progress("export", 1.0)
    return report


def _split_prune_timing(timings: dict[str, float], records: list[LayerRecord]) -> None:
    """Report induction and measurement-only forward passes apart from the pruning step itself."""
    for key in ("induction", "measure"):
        spent = sum(getattr(r.timings, key) or 0.0 for r in records)
        if spent:
            timings[key] = spent
            timings["prune"] = timings["prune"] - spent


def _structure(spec: CompressionSpec) -> str:
    return str(spec.sparsity) if spec.sparsity.is_nm else "unstructured"


def _prune_layers(
    loaded: LoadedModel,
    calib: torch.Tensor,
    ratios: list[float],
    spec: CompressionSpec,
    device: torch.device,
    run: Run,
    generator: torch.Generator,
    resume: ResumeState | None = None,
    save: Saver | None = None,
    *,
    in_forward: bool = False,
) -> tuple[list[LayerRecord], list[dict[str, Any]]]:
    """Walk the decoder layers once: (induce), collect statistics, prune, propagate; the linear
    walk where ``in_forward`` (``_prunes_in_forward``), else the layer walk, with the dense
    model's stream alongside where something fits the dense model.

    With ``resume``, layers before ``resume.next_layer`` are already pruned (their records come
    from the checkpoint) and the walk starts there, on the saved hidden states.
    Returns the layers' records and the factorisation retries.
    """
    stream = DenseStream(spec)
    strategy = (LinearWalk if in_forward else LayerWalk)(
        loaded.arch, spec, device=device, generator=generator, ratios=ratios, stream=stream,
        prior=resume.last.meta if resume is not None else {}, save=save,
    )  # fmt: skip
    batches = _calibration_batches(loaded, calib, spec, device, _calib_batch_size(spec, calib, in_forward))
    start = 0
    if resume is not None:
        start = resume.next_layer
        batches, stream.hidden = resumed_batches(batches, resume, start, stream.active)
    elif stream.active:
        stream.hidden = [b.hidden for b in batches]
    walk(
        loaded.model,
        loaded.arch,
        batches,
        device=device,
        visit=strategy.visit,
        should_stop=run.stop_fn(),
        on_layer=lambda i, n: run.progress("prune", i / n, i, n),
        on_outputs=strategy.on_outputs,
        start=start,
    )
    return strategy.records, strategy.fact


def _calibration_batches(
    loaded: LoadedModel, calib: torch.Tensor, spec: CompressionSpec, device: torch.device, batch_size: int
) -> list[LayerBatch]:
    return capture_inputs(loaded.model, loaded.arch, batched(calib, batch_size), device=device)


def _calib_batch_size(spec: CompressionSpec, calib: torch.Tensor, in_forward: bool) -> int:
    """Calibration sequences per forward: all of them when the layer is pruned inside one forward."""
    return max(1, int(calib.shape[0])) if in_forward else spec.batch_size


def _prunes_in_forward(spec: CompressionSpec, loaded: LoadedModel, calib: torch.Tensor) -> bool:
    """Whether the walk prunes each layer's linears in turn inside one forward (``method.sequential``)."""
    # The plan's walk (core.spec.plan): "linear_if_fits" where the pruner fits the dense model or
    # swaps, as one forward prunes and propagates there at the layer walk's perplexity
    # (docs/pruners.md, "Swaps"); "linear" where it cannot is refused by spec.validate.
    walk = spec.resolve().sequential
    if walk != "linear_if_fits":
        return walk == "linear"
    return _forward_bytes(loaded, calib) <= IN_FORWARD_BYTES


def _forward_bytes(loaded: LoadedModel, calib: torch.Tensor) -> int:
    """A generous estimate of the activations of one decoder layer's forward over every calibration
    token at once, float32: a few hidden-size and MLP-size tensors per token, and the attention
    weights of an eager attention (two [heads, seq, seq] tensors per sequence)."""
    cfg = loaded.model.config.get_text_config()  # a multimodal wrapper (gemma3) keeps it in text_config
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    inter = int(getattr(cfg, "intermediate_size", 0) or getattr(cfg, "ffn_dim", 0) or 4 * hidden)
    heads = int(getattr(cfg, "num_attention_heads", 0) or 1)
    samples, seq = int(calib.shape[0]), int(calib.shape[-1])
    if hidden <= 0:  # a config we cannot size: take the walk that streams
        return IN_FORWARD_BYTES + 1
    return 4 * samples * seq * (6 * hidden + 4 * inter) + 4 * 2 * samples * heads * seq * seq


def _outlier_ratios(
    loaded: LoadedModel, calib: torch.Tensor, spec: CompressionSpec, device: torch.device, run: Run
) -> list[float]:
    """OWL's per-layer outlier ratios from Wanda scores of the dense model (one dense pass)."""
    arch = loaded.arch
    found: list[float] = []

    def visit(i: int, layer: nn.Module, batches: list[LayerBatch]) -> None:
        stats, _ = collect_stats(layer, arch, batches, device=device, want_hessian=False)
        linears = layer_linears(layer, arch)
        scores = [
            wanda_scores(lin.weight.data.float(), stats[name].col_norm) for name, lin in linears.items()
        ]
        found.append(outlier_ratio(scores, spec.owl_m))

    batches = _calibration_batches(loaded, calib, spec, device, spec.batch_size)
    walk(
        loaded.model,
        arch,
        batches,
        device=device,
        visit=visit,
        should_stop=run.stop_fn(),
        on_layer=lambda i, n: run.progress("allocate", i / n, i, n),
    )
    return found


def _sparsity_summary(model: nn.Module, arch: ArchSpec, spec: CompressionSpec) -> dict[str, Any]:
    counts = [
        weight_counts(lin.weight.data, spec.sparsity)
        for layer in decoder_layers(model, arch)
        for lin in layer_linears(layer, arch).values()
    ]
    return sparsity_summary(counts, spec.sparsity)
