"""The plan: a spec's settings with every ``auto`` and ``-1`` resolved, once, to what runs.

``CompressionSpec.resolve()`` builds it; the spec's old properties (``swaps``, ``fits_dense_model``,
...) read it, and the report records it (``report["plan"]``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spruce.core.spec.traits import traits

if TYPE_CHECKING:
    from spruce.core.spec.compression import CompressionSpec

# fit_to "auto" fits the dense model from this unstructured ratio up (docs/pruners.md,
# "Fitting the dense model"); below it nothing was measured, so the paper's fit stays there.
AUTO_FIT_MIN_RATIO = 0.5


# Induction's settings that need no resolving, recorded as set.
_INDUCTION_SETTINGS = ("lr", "shifts", "qk_scale", "reg", "mask", "batch_size", "temperature", "per_linear",
                       "permute", "recover_lr", "recover_weights_lr")  # fmt: skip


@dataclass(frozen=True)
class InductionPlan:
    epochs: int  # training passes of the scales per layer
    samples: int  # calibration sequences read (0: all)
    init: tuple[str, float]  # the scales' start: (statistic, exponent)
    scales_skipped: str | None  # why the scales are not learned, or None
    targets: str | None  # what the scales train against ("model" / "layer"); None where skipped
    fits_model: bool  # the walk carries the dense model's activations for the scales
    permute_rounds: int  # N:M permutation search rounds where it permutes (0: none)
    recover_epochs: int
    recovers: bool
    recovery_targets: str | None  # "model" / "layer"; None without recovery
    settings: dict[str, Any]  # the remaining fixed settings (lr, reg, mask, ...), as set


@dataclass(frozen=True)
class Plan:
    preset: str
    pruner: str
    sparsity: float | str
    allocation: str
    owl: tuple[float, float] | None  # (lambda, M) under OWL allocation
    swaps: int  # Wanda's swap rounds
    swap_shrink: float  # share of X^T X's off-diagonal the swaps drop (0 without swaps)
    fits_dense_model: bool
    fit_weight: float  # share of the dense model's drift the writers fit (0: the dense layer)
    wants_hessian: bool
    hessian_every: int
    walks_in_turn: bool  # the linears may be pruned in turn inside one forward
    sequential: str  # "layer", "linear", or "linear_if_fits" (one forward's activations <= 4 GiB)
    order: str | None  # SparseGPT's column sweep; None for the others
    row_weight: str | None  # SparseGPT at unstructured targets: "output" / "none"; None elsewhere
    magnitude_scope: str | None  # magnitude at unstructured targets: "row" / "layer"; None elsewhere
    selection: str | None  # SparseGPT at unstructured targets: "layer" / "row" / "block"; None elsewhere
    hinv: str | None  # SparseGPT's inverse Hessian route: "solve" / "textbook"; None for the others
    blocksize: int
    dampening: float
    dtype: str
    compute_dtype: str  # "auto" is settled by the device at run time (core.compress)
    attention: str  # the walk's attention kernel: "model" (the checkpoint's) or "eager"
    batch_size: int
    calibration: dict[str, Any]
    evaluation: dict[str, Any]
    induction: InductionPlan | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve(spec: CompressionSpec) -> Plan:
    t = traits(spec.pruner)
    nm = spec.sparsity.is_nm
    swaps = spec.swap_rounds if spec.swap_rounds >= 0 else t.swap_rounds
    fits = _fits_dense_model(spec, swaps)
    share = (spec.fit_share if spec.fit_share >= 0 else t.fit_share) if fits else 0.0
    ind = spec.induction
    epochs = ind.epochs_for(spec.pruner, swaps, nm)
    trains = ind.enabled and (epochs > 0 or ind.init not in ("auto", "one"))
    skipped = _scales_skipped(spec, fits, trains, swaps)
    learns = ind.enabled and skipped is None
    ind_fits = learns and (ind.targets == "model" or (ind.targets == "auto" and epochs > 0))
    recovers = ind.enabled and ind.recover_epochs_for(spec.pruner) > 0
    rec_fits = recovers and ind.targets != "layer" and (ind.targets == "model" or fits or ind_fits)
    in_turn = t.reads_data and not learns
    return Plan(
        preset=spec.preset,
        pruner=spec.pruner,
        sparsity=spec.sparsity.to_json(),
        allocation=spec.allocation,
        owl=(spec.owl_lambda, spec.owl_m) if spec.allocation == "owl" else None,
        swaps=swaps,
        swap_shrink=(spec.swap_shrink if spec.swap_shrink >= 0 else t.swap_shrink) if swaps > 0 else 0.0,
        fits_dense_model=fits,
        fit_weight=share,
        wants_hessian=t.wants_hessian(swaps),
        hessian_every=t.hessian_every,
        walks_in_turn=in_turn,
        sequential=_sequential(spec.sequential, in_turn, fits or (t.swaps and swaps > 0)),
        order=_order(spec.order, nm) if t.needs_hessian else None,
        row_weight=None if t.keeps_weights or nm else spec.row_weight,
        magnitude_scope=None if t.reads_data or nm else spec.magnitude_scope,
        selection=None if t.keeps_weights or nm else spec.selection,
        hinv=spec.hinv if t.needs_hessian else None,
        blocksize=spec.blocksize,
        dampening=spec.dampening,
        dtype=spec.dtype,
        compute_dtype=spec.compute_dtype,
        attention=spec.attention,
        batch_size=spec.batch_size,
        calibration=dataclasses.asdict(spec.calibration),
        evaluation={**dataclasses.asdict(spec.evaluation), "sources": list(spec.evaluation.sources)},
        induction=None
        if not ind.enabled
        else InductionPlan(
            epochs=epochs,
            samples=ind.samples_for(spec.pruner),
            init=t.induction_init if ind.init == "auto" else (ind.init, ind.init_alpha),
            scales_skipped=skipped,
            targets=None if skipped is not None else ("model" if ind_fits else "layer"),
            fits_model=ind_fits,
            permute_rounds=ind.rounds_for(spec.pruner, trains=epochs > 0) if ind.permute and nm else 0,
            recover_epochs=ind.recover_epochs_for(spec.pruner),
            recovers=recovers,
            recovery_targets=("model" if rec_fits else "layer") if recovers else None,
            settings={k: getattr(ind, k) for k in _INDUCTION_SETTINGS},
        ),
    )


def _fits_dense_model(spec: CompressionSpec, swaps: int) -> bool:
    """The pruner fits the dense model's outputs (``fit_to``), not the dense layer's: SparseGPT's
    update, or a mask pruner through its swaps (only when asked: docs/pruners.md)."""
    t = traits(spec.pruner)
    if not t.reads_data or spec.fit_to == "layer":
        return False
    if spec.fit_to == "model":
        return not t.keeps_weights or swaps > 0
    sp = spec.sparsity
    return t.fits_model_auto and (sp.is_nm or sp.ratio >= AUTO_FIT_MIN_RATIO)


def _scales_skipped(spec: CompressionSpec, fits: bool, trains: bool, swaps: int) -> str | None:
    """Why induction's scales are not learned (it then only permutes N:M groups), or None:
    docs/induction.md, "Where the scales are skipped"."""
    if not spec.induction.enabled:
        return None
    t, pruner = traits(spec.pruner), spec.pruner
    if fits and (not t.keeps_weights or trains):
        return f"scales: {pruner} fits the dense model (experimental.fit_to; 'layer' trains them)"
    if trains:
        return None
    if t.swaps and swaps > 0:
        return f"scales: {pruner}'s swaps refine any start on X^T X, which no exact rescaling changes"
    if not t.keeps_weights:
        return f"scales: {pruner}'s update keeps plain pruning's result at unstructured targets"
    return None


def _sequential(setting: str, in_turn: bool, in_turn_by_default: bool) -> str:
    if setting == "layer" or not in_turn:
        return "layer"
    if setting == "linear":
        return "linear"
    return "linear_if_fits" if in_turn_by_default else "layer"


def _order(setting: str, nm: bool) -> str:
    if setting == "auto":
        return "descending" if nm else "ascending"
    return setting
