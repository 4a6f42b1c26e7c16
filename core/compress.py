"""``compress``: the engine's one entry point, used by the worker and the CLI alike.

load -> calibration text -> dense perplexity -> (OWL allocation) -> layer walk: for each decoder
layer (induce) -> statistics -> prune -> propagate -> sparse perplexity -> export + report.json.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import report as rep
from core.arch import ArchSpec, decoder_layers, layer_linears
from core.checkpoint import Checkpoint, CheckpointMismatch, LayerCheckpoint, ResumeState, check_fits
from core.data import batched, calibration_ids, evaluation_ids
from core.errors import Cancelled
from core.evaluate import perplexity
from core.export import dense_bytes, save_compact, save_hf
from core.models import LoadedModel, load_model
from core.owl import outlier_ratio, owl_ratios
from core.progress import Progress, ProgressFn, StopFn, overall_fraction
from core.pruners import (
    PruneResult,
    dense_target,
    fit_cross,
    mlp_row_weights,
    prune_weight,
    reconstruction_error,
    wanda_scores,
)
from core.sparsity import LayerTarget, nm_ok, sparsity_of
from core.spec import IN_FORWARD_BYTES, CompressionSpec
from core.stats import OutputSensitivity
from core.walker import (
    ForwardPrecision,
    LayerBatch,
    capture_inputs,
    collect_paired_stats,
    collect_stats,
    forward_precision,
    prune_in_forward,
    run_layer,
    walk,
)

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_precision(
    compute_dtype: str,
    *,
    model_dtype: torch.dtype,
    device: torch.device,
    arch: ArchSpec,
    fits_dense_model: bool,
) -> ForwardPrecision | None:
    """The walk's forward precision for the spec's ``compute_dtype`` (``core.spec.COMPUTE_DTYPES``);
    None computes in the model's dtype.

    "auto" lowers a float32 model's forwards to bfloat16 only where the hardware multiplies it
    natively (there a 16k-token linear took 0.41x the float32 time on 2 CPU cores; without
    AVX512-BF16 or AMX, bfloat16 is emulated and slower). Where SparseGPT fits the dense model,
    the residual writers stay exact (``ForwardPrecision.exact``: its cross statistics are a small
    difference of their outputs); elsewhere nothing reads their outputs that closely, and
    keeping them exact cost a quarter of the lowered forward."""
    if compute_dtype == "model" or model_dtype != torch.float32:
        return None
    if compute_dtype == "auto" and not bf16_native(device):
        return None
    return ForwardPrecision(torch.bfloat16, exact=(arch.o, arch.mlp_out) if fits_dense_model else ())


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        cpu = torch.cpu
        # Private probes (stable since torch 2.2); missing ones count as "no".
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in probes)
    return False


@dataclass
class Report:
    """Everything a run measured; ``to_dict()`` is the content of report.json."""

    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return self.data

    @property
    def summary(self) -> dict[str, Any]:
        """The results the service stores on the job row."""
        keys = ("perplexity", "sparsity", "sizes", "timings", "layers", "resume")
        return {k: self.data.get(k) for k in keys}


class _Run:
    """Progress, timing and cancellation for one ``compress`` call."""

    def __init__(self, on_progress: ProgressFn | None, should_stop: StopFn | None) -> None:
        self._on_progress = on_progress
        self._should_stop = should_stop
        self._last = 0.0
        self.timings: dict[str, float] = {}

    def progress(
        self, stage: str, within: float, layer: int | None = None, layers: int | None = None
    ) -> None:
        fraction = max(self._last, overall_fraction(stage, within))
        self._last = fraction
        if self._on_progress is not None:
            self._on_progress(Progress(stage=stage, fraction=fraction, layer=layer, layers=layers))

    def check_stop(self, where: str) -> None:
        if self._should_stop is not None and self._should_stop():
            raise Cancelled(f"cancelled {where}")

    def stop_fn(self) -> StopFn | None:
        return self._should_stop

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.check_stop(f"before stage {name!r}")
        self.progress(name, 0.0)
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        self.progress(name, 1.0)


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
    device = torch.device(device)
    run = _Run(on_progress, should_stop)
    started = time.time()
    # One seeded generator for the whole run (induction's shuffling): its state is checkpointed,
    # so a resumed run draws exactly what the interrupted one would have drawn.
    generator = torch.Generator().manual_seed(spec.calibration.seed)

    with run.stage("load"):
        loaded = load_model(spec.model, dtype=_DTYPES[spec.dtype], cache_dir=cache_dir)
    model, arch = loaded.model, loaded.arch
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
    resume = _resume(checkpoint, model, arch, generator, run, token_shapes)
    prior: dict[str, Any] = resume.last.meta if resume is not None else {}

    # Measured on the dense model: a resumed run's model is half pruned, so these come from the
    # checkpoint instead of being measured again.
    dense_ppl: dict[str, float] = dict(prior.get("dense_ppl", {}))
    if spec.evaluation.dense and resume is None:
        with run.stage("evaluate_dense"):
            dense_ppl = _evaluate(loaded, evals, spec, device, run, "evaluate_dense")

    precision = resolve_precision(
        spec.compute_dtype,
        model_dtype=_DTYPES[spec.dtype],
        device=device,
        arch=arch,
        fits_dense_model=spec.fits_dense_model,
    )
    ratios: list[float] = list(prior.get("ratios", [spec.sparsity.ratio] * n_layers))
    outliers: list[float] | None = prior.get("outliers")
    if spec.allocation == "owl" and resume is None:
        with run.stage("allocate"), forward_precision(precision):
            outliers = _outlier_ratios(loaded, calib, spec, device, run)
            ratios = owl_ratios(outliers, spec.sparsity.ratio, spec.owl_lambda)

    saver = None
    if checkpoint is not None:
        fixed = {"dense_ppl": dense_ppl, "ratios": ratios, "outliers": outliers, "resumes": _resumes(resume)}
        saver = _Saver(checkpoint, model, arch, generator, run, fixed, started, prior.get("elapsed", 0.0))
    with run.stage("prune"), forward_precision(precision):
        layer_rows, fact = _prune_layers(
            loaded, calib, ratios, spec, device, run, generator, resume, saver, in_forward=in_forward
        )
    peak_after_prune = rep.peak_rss_bytes()

    with run.stage("evaluate_sparse"):
        sparse_ppl = _evaluate(loaded, evals, spec, device, run, "evaluate_sparse")

    data = rep.build(
        spec=spec,
        loaded=loaded,
        calibration=calib_info,
        evaluation={src: meta for src, (_, meta) in evals.items()},
        dense_ppl=dense_ppl,
        sparse_ppl=sparse_ppl,
        layers=layer_rows,
        sparsity=_sparsity_summary(model, arch, spec),
        outliers=outliers,
        factorization=fact,
        device=str(device),
    )
    data["sequential"] = "linear" if in_forward else "layer"
    data["compute_dtype"] = str(precision.dtype if precision else _DTYPES[spec.dtype]).removeprefix("torch.")
    data["resumed"] = resume is not None
    data["resume"] = _resume_report(resume)
    data["sizes"] = {"dense_bytes": dense_bytes(model)}
    if out_dir is not None:
        with run.stage("export"):
            out_dir = Path(out_dir)
            data["sizes"]["hf_bytes"] = save_hf(model, loaded.tokenizer, out_dir / "hf")
            data["sizes"]["compact_bytes"] = save_compact(
                model, arch, out_dir / "compact", structure=_structure(spec), tokenizer=loaded.tokenizer
            )
    _split_prune_timing(run.timings, layer_rows)
    data["timings"] = {k: round(v, 3) for k, v in run.timings.items()}
    data["timings"]["total"] = round(time.time() - started + prior.get("elapsed", 0.0), 3)
    data["peak_rss_after_prune_bytes"] = peak_after_prune
    data["peak_rss_bytes"] = rep.peak_rss_bytes()
    report = Report(data)
    if out_dir is not None:
        rep.write(report.to_dict(), Path(out_dir) / "report.json")
    run.progress("export", 1.0)
    return report


# -- checkpoints ------------------------------------------------------------------------------------


def _resume(
    checkpoint: Checkpoint | None,
    model: nn.Module,
    arch: ArchSpec,
    generator: torch.Generator,
    run: _Run,
    token_shapes: list[tuple[int, ...]],
) -> ResumeState | None:
    """Load the checkpoint's finished layers into ``model`` and its generator state; None: start fresh.

    ``token_shapes`` are this run's calibration batches [b, seq]: the saved hidden states must match.
    """
    if checkpoint is None:
        return None
    state = checkpoint.load()
    if state is None:
        return None
    layers = decoder_layers(model, arch)
    try:
        check_fits(state, len(layers), [{k: v.shape for k, v in m.state_dict().items()} for m in layers])
        if [tuple(h.shape[:2]) for h in state.last.hidden[: len(token_shapes)]] != token_shapes:
            raise CheckpointMismatch("its hidden states were computed on other calibration batches")
    except CheckpointMismatch as exc:
        # Not a silent fallback: the run is correct from scratch, and the log says why it restarted.
        log.warning("ignoring the checkpoint (%s); starting from the first layer", exc)
        return None
    with torch.no_grad():
        for layer, weights in zip(layers, state.weights, strict=False):
            layer.load_state_dict(weights)
    generator.set_state(state.last.generator)
    for stage, seconds in state.last.meta.get("timings", {}).items():
        run.timings[stage] = run.timings.get(stage, 0.0) + seconds
    log.info("resuming after layer %d of %d", state.next_layer, len(layers))
    return state


def _resumes(resume: ResumeState | None) -> list[dict[str, int]]:
    """Every resume of this run so far: the layer each continued at (0-based)."""
    if resume is None:
        return []
    return [*resume.last.meta.get("resumes", []), {"from_layer": resume.next_layer}]


def _resume_report(resume: ResumeState | None) -> dict[str, Any] | None:
    if resume is None:
        return None
    history = _resumes(resume)
    return {"from_layer": resume.next_layer, "count": len(history), "history": history}


class _Saver:
    """Builds the ``LayerCheckpoint`` of a finished layer and hands it to the checkpoint."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        model: nn.Module,
        arch: ArchSpec,
        generator: torch.Generator,
        run: _Run,
        fixed: dict[str, Any],
        started: float,
        elapsed_before: float,
    ) -> None:
        self.checkpoint, self.model, self.arch, self.generator = checkpoint, model, arch, generator
        self.run, self.fixed, self.started, self.elapsed_before = run, fixed, started, elapsed_before
        self.prune_started = time.perf_counter()

    def __call__(
        self, i: int, outputs: list[torch.Tensor], rows: list[dict[str, Any]], fact: list[dict[str, Any]]
    ) -> None:
        layers = decoder_layers(self.model, self.arch)
        timings = dict(self.run.timings)
        timings["prune"] = timings.get("prune", 0.0) + time.perf_counter() - self.prune_started
        meta = {
            **self.fixed,
            "rows": rows,
            "fact": fact,
            "timings": timings,
            "elapsed": self.elapsed_before + time.time() - self.started,
        }
        self.checkpoint.save(
            LayerCheckpoint(
                index=i,
                layers=len(layers),
                weights=dict(layers[i].state_dict()),
                hidden=outputs,
                generator=self.generator.get_state(),
                meta=meta,
            )
        )


def _split_prune_timing(timings: dict[str, float], rows: list[dict[str, Any]]) -> None:
    """Report induction and measurement-only forward passes apart from the pruning step itself."""
    for key in ("induction", "measure"):
        spent = sum(r.get(f"{key}_seconds", 0.0) for r in rows)
        if spent:
            timings[key] = spent
            timings["prune"] = timings["prune"] - spent


def _structure(spec: CompressionSpec) -> str:
    return str(spec.sparsity) if spec.sparsity.is_nm else "unstructured"


def _calibration_batches(
    loaded: LoadedModel, calib: torch.Tensor, spec: CompressionSpec, device: torch.device, batch_size: int
) -> list[LayerBatch]:
    return capture_inputs(loaded.model, loaded.arch, batched(calib, batch_size), device=device)


def _calib_batch_size(spec: CompressionSpec, calib: torch.Tensor, in_forward: bool) -> int:
    """Calibration sequences per forward: all of them when the layer is pruned inside one forward."""
    return max(1, int(calib.shape[0])) if in_forward else spec.batch_size


def _prunes_in_forward(spec: CompressionSpec, loaded: LoadedModel, calib: torch.Tensor) -> bool:
    """Whether the walk prunes each layer's linears in turn inside one forward (``method.sequential``)."""
    if spec.sequential == "layer" or not spec.walks_in_turn:
        return False  # ("linear" where it cannot is refused by spec.validate)
    if spec.sequential == "linear":
        return True
    # Wanda with swaps: one forward prunes and propagates (the dense pass only measures), the
    # same perplexity as the layer walk on the benchmark (docs/pruners.md, "Swaps").
    in_turn = spec.fits_dense_model or (spec.pruner == "wanda" and spec.swaps > 0)
    return in_turn and _forward_bytes(loaded, calib) <= IN_FORWARD_BYTES


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


def _evaluate(
    loaded: LoadedModel,
    evals: dict[str, tuple[torch.Tensor, dict[str, Any]]],
    spec: CompressionSpec,
    device: torch.device,
    run: _Run,
    stage: str,
) -> dict[str, float]:
    out: dict[str, float] = {}
    total = max(1, len(evals))
    for k, (src, (ids, _)) in enumerate(evals.items()):
        n = len(decoder_layers(loaded.model, loaded.arch))

        def on_layer(i: int, layers: int, k: int = k) -> None:
            run.progress(stage, (k + i / layers) / total, i, layers)

        result = perplexity(
            loaded.model,
            loaded.arch,
            ids,
            seq_len=spec.evaluation.seq_len,
            max_windows=spec.evaluation.max_windows,
            batch_size=spec.evaluation.batch_size,
            device=device,
            on_layer=on_layer if n else None,
        )
        out[src] = result.ppl
    return out


def _outlier_ratios(
    loaded: LoadedModel, calib: torch.Tensor, spec: CompressionSpec, device: torch.device, run: _Run
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


def _prune_layers(
    loaded: LoadedModel,
    calib: torch.Tensor,
    ratios: list[float],
    spec: CompressionSpec,
    device: torch.device,
    run: _Run,
    generator: torch.Generator,
    resume: ResumeState | None = None,
    save: _Saver | None = None,
    *,
    in_forward: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Walk the decoder layers once: (induce), collect statistics, prune, propagate.

    With ``resume``, layers before ``resume.next_layer`` are already pruned (their report rows come
    from the checkpoint) and the walk starts there, on the saved hidden states. ``in_forward``
    (``_prunes_in_forward``): every calibration token is in one batch and each layer is pruned
    group by group inside its forward (``walker.prune_in_forward``); where SparseGPT fits the dense
    model the layer's ``rel_error`` is then against the dense model's output of the layer (its
    ``error_vs``), which that walk has, instead of the dense layer's output on the pruned inputs,
    which it does not compute.
    """
    arch = loaded.arch
    meta = resume.last.meta if resume is not None else {}
    rows: list[dict[str, Any]] = list(meta.get("rows", []))
    fact: list[dict[str, Any]] = list(meta.get("fact", []))
    dense_out: list[list[torch.Tensor]] = []
    needs_stats = spec.pruner != "magnitude"
    # fit_to="model", or induction's scales or recovery trained against the dense model
    # (induction.targets): the dense model's own activations walk alongside the pruned model's.
    paired = spec.fits_dense_model or spec.induction_fits_model or spec.recovery_fits_model
    dense_stream: list[torch.Tensor] = []
    # Who moves the dense stream on by one layer: SparseGPT's paired statistics where it fits the
    # dense model, else induction's training against it (the two never meet: induction's scales
    # are skipped where the pruner fits the dense model), else only the recovery reads it.
    recovery_advances = paired and not (spec.fits_dense_model or spec.induction_fits_model)

    def visit(i: int, layer: nn.Module, batches: list[LayerBatch]) -> list[torch.Tensor] | None:
        target = LayerTarget.from_sparsity(spec.sparsity, None if spec.sparsity.is_nm else ratios[i])
        row: dict[str, Any] = {"index": i, "target": round(target.ratio, 6), "induction": None}
        skipped = spec.induction_scales_skipped
        if in_forward:
            if skipped is not None:  # (spec.walks_in_turn: induction is off or its scales skipped)
                # as below; the N:M permutation is chosen inside the forward (_permute_writer)
                row["induction_skipped"] = skipped
            return _visit_in_forward(i, layer, batches, target, row)
        col_weights: dict[str, torch.Tensor] = {}
        pruned: dict[str, PruneResult] = {}
        measured: list[torch.Tensor] | None = None  # the dense pass, where induction shared it
        if skipped is not None:
            # SparseGPT is invariant to induction's foldable scales (docs/induction.md section 2);
            # induction reaches it only through per-linear importances and the scale-dependence of
            # the dampening, both learned and guarded against the paper's fit to the dense layer.
            # With the fit to the dense model they made SparseGPT 2:4 worse (27.20 -> 28.02 with the
            # importances, 27.77 with the folded scales alone), so induction is skipped there.
            # Wanda with swaps and unstructured SparseGPT train no scales by default (measured never
            # to win: spec.induction_epochs); untrained, they start at 1, which is plain pruning.
            # The N:M channel permutation below still applies: no pruner is invariant to it.
            row["induction_skipped"] = skipped
        elif spec.induction.enabled:
            # torch-heavy training code, only when asked for
            from core.induction import induce_layer, recorder_for

            reference, shared = None, None
            if spec.induction_fits_model:  # the dense model's inputs of this layer, batch for batch
                reference = [replace(b, hidden=h) for b, h in zip(batches, dense_stream, strict=True)]
            elif not needs_stats:
                # Magnitude reads no statistics: the walk's dense pass below only measures the
                # layer's error. Run it first, through induction's statistics hooks, and induction
                # runs no dense pass of its own (the fold is exact: the dense outputs stay the
                # same). The forward stays measurement, as without induction; the hooks are induction's.
                started = time.perf_counter()
                with recorder_for(layer, arch, spec.induction, spec.pruner) as recorder:
                    measured = run_layer(layer, batches, device=device)
                row["measure_seconds"] = time.perf_counter() - started - recorder.seconds
                shared = (measured, recorder)  # (induce_layer counts the recorder's seconds)
            result = induce_layer(
                layer,
                arch,
                batches,
                device=device,
                target=target,
                pruner=spec.pruner,
                spec=spec.induction,
                generator=generator,
                dampening=spec.dampening,
                blocksize=spec.blocksize,
                order=spec.order,
                swap_rounds=spec.swaps,
                reference=reference,
                dense=shared,
            )
            if result.reference_outputs is not None:  # the dense layer's, computed before the fold
                dense_stream[:] = result.reference_outputs
            col_weights = dict(result.col_weights)
            row["induction"] = rep.induction_row(result)
            row["induction_seconds"] = result.seconds
        if recovery_advances:
            started = time.perf_counter()
            reference = [replace(b, hidden=h) for b, h in zip(batches, dense_stream, strict=True)]
            dense_stream[:] = run_layer(layer, reference, device=device)
            row["induction_seconds"] = row.get("induction_seconds", 0.0) + time.perf_counter() - started
        start = time.perf_counter()
        sens = _sensitivity_wanted(spec, target)
        if spec.fits_dense_model:
            stats, outputs, dense_next = collect_paired_stats(
                layer, arch, batches, dense_stream, device=device, sensitivity=sens,
                hessian_every=spec.hessian_every,
            )  # fmt: skip
            dense_stream[:] = dense_next
        elif needs_stats:
            stats, outputs = collect_stats(
                layer,
                arch,
                batches,
                device=device,
                want_hessian=spec.wants_hessian,
                sensitivity=sens,
                hessian_every=spec.hessian_every,
            )
        elif measured is not None:  # (run before induction, above)
            stats, outputs = {}, measured
        else:
            # Magnitude needs no data: this dense pass only measures the layer's error.
            stats, outputs = {}, run_layer(layer, batches, device=device)
            row["measure_seconds"] = time.perf_counter() - start
        dense_out.append(outputs)
        if spec.induction.enabled and spec.induction.permute and target.is_nm and skipped is not None:
            # (where the scales train, induce_layer above permuted the layer before training)
            pruned = _permute_layer(layer, arch, target, stats, spec, col_weights, generator, row)
        # from the dense mlp_out, before _prune_linears prunes it
        w_out = layer_linears(layer, arch)[arch.mlp_out].weight
        row_weights = {name: mlp_row_weights(w_out, s) for name, s in (sens or {}).items()}
        row["linears"] = _prune_linears(
            layer, arch, target, stats, spec, col_weights, fact, i, pruned, row_weights
        )
        if spec.recovers:
            targets = list(dense_stream) if spec.recovery_fits_model else outputs
            _recover(layer, arch, batches, targets, "model" if spec.recovery_fits_model else "layer",
                     spec, device, generator, row)  # fmt: skip
        row["_visit_end"] = time.perf_counter()
        rows.append(row)
        return None  # (the walker runs the pruned, recovered layer for its outputs)

    def _visit_in_forward(
        i: int, layer: nn.Module, batches: list[LayerBatch], target: LayerTarget, row: dict[str, Any]
    ) -> list[torch.Tensor]:
        (batch,) = batches
        sens = _sensitivity_wanted(spec, target)
        done: dict[str, dict[str, Any]] = {}
        plan = None
        if spec.induction.enabled and spec.induction.permute and target.is_nm:
            from core.induction.transform import plan_layer  # torch-heavy induction code, only when asked for

            plan = plan_layer(layer, arch)

        def prune(group: tuple[str, ...], stats: Any) -> torch.Tensor | None:
            if plan is not None and group[0] in (arch.o, arch.mlp_out):
                entries, p, info, seconds = _permute_writer(
                    layer, arch, plan, group[0], stats, target, spec, generator, fact, i
                )
                done.update(entries)
                perms = row.setdefault("permutation", {})
                perms["down" if group[0] == arch.mlp_out else "o"] = info
                perms["seconds"] = round(perms.get("seconds", 0.0) + seconds, 4)
                row["induction_seconds"] = row.get("induction_seconds", 0.0) + seconds
                return p
            row_weights = {}
            if sens is not None and group == arch.mlp_in:  # filled by the reference pass; down still dense
                w_out = layer_linears(layer, arch)[arch.mlp_out].weight
                row_weights = {name: mlp_row_weights(w_out, s) for name, s in sens.items()}
            done.update(
                _prune_linears(
                    layer, arch, target, dict.fromkeys(group, stats), spec, {}, fact, i, None, row_weights,
                    only=group,
                )
            )  # fmt: skip
            return None

        passes: dict[str, float] = {}
        out, ref_out = prune_in_forward(
            layer,
            arch,
            batch,
            dense_stream[0] if paired else batch.hidden,
            device=device,
            prune=prune,
            fit_reference=spec.fits_dense_model,
            want_hessian=spec.wants_hessian,
            sensitivity=sens,
            timings=passes,
            hessian_every=spec.hessian_every,
        )
        if not paired and sens is None:
            # The dense pass then only yields the dense layer's output, for the layer's error
            # (as magnitude's): reported as measurement, apart from the pruning step.
            row["measure_seconds"] = passes["reference"]
        dense_out.append([ref_out])
        if paired:
            dense_stream[:] = [ref_out]
            row["error_vs"] = "dense model"
        row["linears"] = {name: done[name] for name in arch.linears}
        # ref_out: the dense model's output of the layer where the walk is paired, else the dense
        # layer's on the pruned inputs (with targets "layer", SparseGPT's fit to the dense model
        # leaves only the former)
        if spec.recovers and _recover(
            layer, arch, batches, [ref_out], "model" if paired else "layer", spec, device, generator, row
        ):
            started = time.perf_counter()
            (out,) = run_layer(layer, batches, device=device)  # the recovered layer's output
            row["induction_seconds"] += time.perf_counter() - started
        row["_visit_end"] = time.perf_counter()
        rows.append(row)
        return [out]

    def on_outputs(i: int, outputs: list[torch.Tensor]) -> None:
        row = rows[i]
        if not needs_stats:  # magnitude: propagating is only needed to measure the next layer's error
            row["measure_seconds"] += time.perf_counter() - row["_visit_end"]
        del row["_visit_end"]
        row["rel_error"] = _relative_error(dense_out.pop(), outputs)
        row["sparsity"] = _layer_sparsity(row["linears"])
        if save is not None:
            save(i, [*outputs, *dense_stream], rows, fact)

    batches = _calibration_batches(loaded, calib, spec, device, _calib_batch_size(spec, calib, in_forward))
    start = 0
    if resume is not None:
        start = resume.next_layer
        batches, dense_stream = _resumed_batches(batches, resume, start, paired)
    elif paired:
        dense_stream = [b.hidden for b in batches]
    walk(
        loaded.model,
        arch,
        batches,
        device=device,
        visit=visit,
        should_stop=run.stop_fn(),
        on_layer=lambda i, n: run.progress("prune", i / n, i, n),
        on_outputs=on_outputs,
        start=start,
    )
    return rows, fact


def _recover(
    layer: nn.Module,
    arch: ArchSpec,
    batches: list[LayerBatch],
    targets: list[torch.Tensor],
    against: str,
    spec: CompressionSpec,
    device: torch.device,
    generator: torch.Generator,
    row: dict[str, Any],
) -> bool:
    """Induction's recovery scales on the pruned layer (``core.induction.recover``), recorded in
    ``row`` and timed as induction; True where the trained scales were folded into the layer."""
    from core.induction.recover import recover_layer  # torch-heavy training code, only when asked for

    result = recover_layer(
        layer, arch, batches, targets, device=device, epochs=spec.induction.recover_epochs_for(spec.pruner),
        lr=spec.induction.recover_lr, weights_lr=spec.induction.recover_weights_lr,
        samples=spec.induction.samples_for(spec.pruner), generator=generator,
    )  # fmt: skip
    result.info["targets"] = against
    row["recovery"] = rep.recovery_row(result)
    row["induction_seconds"] = row.get("induction_seconds", 0.0) + result.seconds
    return result.chosen == "trained"


def _sensitivity_wanted(spec: CompressionSpec, target: LayerTarget) -> dict[str, OutputSensitivity] | None:
    """An empty dict to fill when SparseGPT's unstructured selection weighs rows against each
    other (method.row_weight), else None."""
    if spec.pruner == "sparsegpt" and spec.row_weight == "output" and not target.is_nm:
        return {}
    return None


def _resumed_batches(
    batches: list[LayerBatch], resume: ResumeState, start: int, paired: bool
) -> tuple[list[LayerBatch], list[torch.Tensor]]:
    """The inputs of layer ``start``: the saved hidden states with this run's captured kwargs, and
    (``paired``) the dense model's inputs of that layer, saved after the pruned model's."""
    hidden = resume.last.hidden
    shapes = [b.hidden.shape for b in batches] * (2 if paired else 1)
    if [h.shape for h in hidden] != shapes:  # _resume checked [b, seq] already
        raise CheckpointMismatch("the checkpoint's hidden states do not fit this run's calibration batches")
    resumed = [b.advance(h.to(b.hidden.device), start) for b, h in zip(batches, hidden, strict=False)]
    dense = [h.to(b.hidden.device) for b, h in zip(batches, hidden[len(batches) :], strict=False)]
    return resumed, dense


def _permute_rounds(spec: CompressionSpec) -> int:
    """The N:M permutation's search rounds where the walk chooses it (the scales do not train)."""
    return spec.induction.rounds_for(spec.pruner, trains=spec.induction_epochs > 0)


def _permute_layer(
    layer: nn.Module,
    arch: ArchSpec,
    target: LayerTarget,
    stats: dict[str, Any],
    spec: CompressionSpec,
    col_weights: dict[str, torch.Tensor],
    generator: torch.Generator,
    row: dict[str, Any],
) -> dict[str, PruneResult]:
    """Induction's N:M channel permutation (docs/induction.md) where its scales are skipped
    (SparseGPT fitting the dense model, Wanda with swaps): chosen from the statistics just
    collected, folded into the layer, and applied to those statistics, so no pass is repeated.

    Guarded per linear on the pruner's own objective (``_fit``): o and down are pruned in both
    orders and the permutation is kept only where it fits better (||W* X - W_pruned X||, from
    the statistics). Returns the chosen pruning of o and down, so they are not pruned a third time."""
    from core.induction.permute import choose_permutations, fold_permutation_, permute_inputs_
    from core.induction.transform import plan_layer

    start = time.perf_counter()
    plan = plan_layer(layer, arch)
    perm = choose_permutations(
        layer, plan, target, spec.pruner, stats, col_weights,
        dampening=spec.dampening, rounds=_permute_rounds(spec), generator=generator,
    )  # fmt: skip
    chosen: dict[str, PruneResult] = {}
    chosen_seconds = 0.0
    for group, path in (("down", arch.mlp_out), ("o", arch.o)):
        p = getattr(perm, group)
        if p is None:
            continue
        W = layer_linears(layer, arch)[path].weight.data
        chosen[path], _, keep, spent = _guarded_permutation(
            W, stats[path], p, target, spec, col_weights.get(path), perm.info[group]
        )
        chosen_seconds += spent
        if not keep:
            setattr(perm, group, None)
    fold_permutation_(layer, plan, perm)
    permute_inputs_(plan, perm, stats, col_weights)
    seconds = time.perf_counter() - start - chosen_seconds
    perm.info["seconds"] = round(seconds, 4)
    row["permutation"] = perm.info
    row["induction_seconds"] = row.get("induction_seconds", 0.0) + seconds
    return chosen


def _permute_writer(
    layer: nn.Module,
    arch: ArchSpec,
    plan: Any,
    path: str,
    stats: Any,
    target: LayerTarget,
    spec: CompressionSpec,
    generator: torch.Generator,
    fact: list[dict[str, Any]],
    index: int,
) -> tuple[dict[str, dict[str, Any]], torch.Tensor | None, dict[str, Any], float]:
    """``_permute_layer`` for one writer (o or down) inside the forward that prunes the layer in
    turn: choose its N:M channel permutation from the statistics the forward brought, prune it in
    both orders, and keep the permutation (folded into the layer) only where the pruner's own fit
    error comes out lower. Returns (its report entry, the permutation kept or None, the
    permutation's report, the seconds it cost beyond the pruning the step does anyway)."""
    from core.induction.permute import LayerPermutation, fold_permutation_, writer_permutation

    start = time.perf_counter()
    group = "down" if path == arch.mlp_out else "o"
    p, info = writer_permutation(
        layer, plan, target, spec.pruner, group, stats, None,
        dampening=spec.dampening, rounds=_permute_rounds(spec), generator=generator,
    )  # fmt: skip
    W = layer_linears(layer, arch)[path].weight.data
    result, used_stats, keep, spent = _guarded_permutation(W, stats, p, target, spec, None, info)
    if keep:
        fold_permutation_(
            layer, plan, LayerPermutation(p if group == "down" else None, p if group == "o" else None)
        )
    entries = _prune_linears(
        layer, arch, target, {path: used_stats}, spec, {}, fact, index, {path: result}, only=(path,)
    )
    seconds = time.perf_counter() - start - spent
    return entries, (p if keep else None), info, seconds


def _guarded_permutation(
    W: torch.Tensor,
    st: Any,
    p: torch.Tensor,
    target: LayerTarget,
    spec: CompressionSpec,
    col_weight: torch.Tensor | None,
    info: dict[str, Any],
) -> tuple[PruneResult, Any, bool, float]:
    """The pruner (SparseGPT, or Wanda with its swaps) on W in its own order and with its inputs
    permuted by ``p``; the permutation is kept only where the pruner's own fit error (``_fit``)
    comes out lower. Both errors and the choice go into ``info``. Returns (the chosen pruning,
    the statistics in its order, whether ``p`` is kept, the seconds of the one pruning the step
    would do anyway)."""
    from core.induction.permute import permuted_stats

    t0 = time.perf_counter()
    plain, plain_err = _fit(W, st, target, spec, col_weight)
    t1 = time.perf_counter()
    moved_stats = permuted_stats(st, p)
    cw = None if col_weight is None else col_weight[p.to(col_weight.device)]
    moved, moved_err = _fit(W[:, p.to(W.device)], moved_stats, target, spec, cw)
    t2 = time.perf_counter()
    keep = moved_err < plain_err
    info.update(fit_error_before=round(plain_err, 8), fit_error_after=round(moved_err, 8), kept=keep)
    if keep:
        return moved, moved_stats, True, t2 - t1
    return plain, st, False, t1 - t0


def _fit(
    W: torch.Tensor, st: Any, target: LayerTarget, spec: CompressionSpec, col_weight: torch.Tensor | None
) -> tuple[PruneResult, float]:
    """The pruning of W and its error against the dense model's output (SparseGPT fitting it)
    or the dense layer's (without cross statistics: the objective of Wanda's swaps), relative,
    from the statistics."""
    result = prune_weight(
        W, spec.pruner, target, st, blocksize=spec.blocksize, dampening=spec.dampening, col_weight=col_weight,
        order=spec.order, swap_rounds=spec.swaps, fit_share=spec.fit_weight, selection=spec.selection,
    )  # fmt: skip
    H, cross = st.hessian(), fit_cross(st, spec.fit_weight)
    goal = W if cross is None else dense_target(W, H, cross)
    return result, reconstruction_error(goal, result.W, H)


def _prune_linears(
    layer: nn.Module,
    arch: ArchSpec,
    target: LayerTarget,
    stats: dict[str, Any],
    spec: CompressionSpec,
    col_weights: dict[str, torch.Tensor],
    fact: list[dict[str, Any]],
    index: int,
    pruned: dict[str, PruneResult] | None = None,
    row_weights: dict[str, torch.Tensor] | None = None,
    *,
    only: tuple[str, ...] | None = None,
) -> dict[str, dict[str, Any]]:
    """Prune every linear of the layer (or those named in ``only``) in place (``pruned``: results
    already computed, by path; ``row_weights``: SparseGPT's row weights, by path)."""
    out: dict[str, dict[str, Any]] = {}
    for name, lin in layer_linears(layer, arch).items():
        if only is not None and name not in only:
            continue
        W = lin.weight.data  # [out, in]
        st = stats.get(name)
        result = (pruned or {}).get(name) or prune_weight(
            W,
            spec.pruner,
            target,
            st,
            blocksize=spec.blocksize,
            dampening=spec.dampening,
            col_weight=col_weights.get(name),
            order=spec.order,
            row_weight=(row_weights or {}).get(name),
            swap_rounds=spec.swaps,
            fit_share=spec.fit_weight,
            magnitude_scope=spec.magnitude_scope,
            selection=spec.selection,
        )
        entry: dict[str, Any] = {"sparsity": round(sparsity_of(result.W), 6), "params": W.numel()}
        if result.swaps is not None:
            entry["swaps"] = result.swaps.swaps
            entry["swap_gain"] = round(result.swaps.gain, 6)
        if st is not None and st.H is not None:
            entry["rel_error"] = round(reconstruction_error(W, result.W, st.H), 6)
        if result.retries:
            fact.append({"layer": index, "linear": name, "retries": result.retries, "damp": result.damp})
        W.copy_(result.W)
        out[name] = entry
    return out


def _relative_error(dense: list[torch.Tensor], sparse: list[torch.Tensor]) -> float:
    """||Y_dense - Y_sparse|| / ||Y_dense|| of one layer's outputs, over all calibration batches."""
    num = sum(float((d.float() - s.float()).pow(2).sum()) for d, s in zip(dense, sparse, strict=True))
    den = sum(float(d.float().pow(2).sum()) for d in dense)
    return round((num / max(den, 1e-30)) ** 0.5, 6)


def _layer_sparsity(linears: dict[str, dict[str, Any]]) -> float:
    zeros = sum(v["sparsity"] * v["params"] for v in linears.values())
    total = sum(v["params"] for v in linears.values())
    return round(zeros / max(total, 1), 6)


def _sparsity_summary(model: nn.Module, arch: ArchSpec, spec: CompressionSpec) -> dict[str, Any]:
    per_linear: list[float] = []
    zeros = total = 0
    pattern = True
    for layer in decoder_layers(model, arch):
        for lin in layer_linears(layer, arch).values():
            W = lin.weight.data
            z = int((W == 0).sum())
            zeros, total = zeros + z, total + W.numel()
            per_linear.append(z / W.numel())
            if spec.sparsity.is_nm:
                assert spec.sparsity.n is not None and spec.sparsity.m is not None
                pattern = pattern and nm_ok(W, spec.sparsity.n, spec.sparsity.m)
    return {
        "target": spec.sparsity.to_json(),
        "overall": round(zeros / max(total, 1), 6),
        "mean": round(sum(per_linear) / max(len(per_linear), 1), 6),
        "min": round(min(per_linear, default=0.0), 6),
        "max": round(max(per_linear, default=0.0), 6),
        "nm_ok": pattern if spec.sparsity.is_nm else None,
        "pruned_params": total,
    }
