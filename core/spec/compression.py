"""The compression spec: what to prune, how, on which text (one declaration: core.spec.fields)."""

from __future__ import annotations

import functools
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal

from spruce.core.errors import SpecError
from spruce.core.spec import schema
from spruce.core.spec.fields import opt
from spruce.core.spec.plan import Plan, resolve
from spruce.core.spec.presets import PRESET_NAMES
from spruce.core.spec.settings import EvalSpec, InductionSpec, TextSpec
from spruce.core.spec.sparsity import Sparsity
from spruce.core.spec.traits import PRUNERS, Pruner, traits

Allocation = Literal["uniform", "owl"]
ALLOCATIONS: tuple[str, ...] = ("uniform", "owl")
# fit_to: what the writers (o, down) are fitted to: the dense model's outputs, or the dense layer's
# on the pruned model's inputs (the paper's); "auto": per pruner (core.spec.plan).
FIT_TARGETS: tuple[str, ...] = ("auto", "model", "layer")
SweepOrder = Literal["auto", "ascending", "descending", "natural"]
SWEEP_ORDERS: tuple[str, ...] = ("auto", "ascending", "descending", "natural")
RowWeight = Literal["output", "none"]
ROW_WEIGHTS: tuple[str, ...] = ("output", "none")
Sequential = Literal["auto", "linear", "layer"]
SEQUENTIALS: tuple[str, ...] = ("auto", "linear", "layer")
# "auto" walks the linears in turn only where one layer forward of every calibration token needs
# at most this much activation memory (docs/pruners.md, "Linears in turn").
IN_FORWARD_BYTES = 4 << 30
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")  # auto: the checkpoint's
COMPUTE_DTYPES: tuple[str, ...] = ("auto", "model", "bfloat16")


@dataclass(frozen=True)
class CompressionSpec:
    """A compression job. ``from_dict`` reads the HTTP job body; ``resolve`` gives the plan.

    The properties below (``swaps``, ``fits_dense_model``, ...) are views of ``resolve()``."""

    model: str = opt(MISSING, "'smollm2-135m', a hub id, an s3:// URI or a local folder", public=True)
    sparsity: Sparsity = opt(MISSING, "a ratio in (0, 1) or an 'N:M' pattern such as '2:4'", public=True)
    pruner: Pruner = opt(
        "wanda", "the pruner", public=True, choices=PRUNERS, body="method.pruner", flag="--pruner"
    )
    preset: str = opt("default", "default: the engine's measured choices; reference: the papers' methods "
                      "as llm-compressor runs them", public=True, choices=PRESET_NAMES, body="method.preset")  # fmt: skip
    allocation: Allocation = opt("uniform", "per-layer sparsity: uniform, or OWL by outlier ratio", public=True,
                                 choices=ALLOCATIONS, body="method.allocation")  # fmt: skip
    owl_lambda: float = opt(0.08, "OWL: per-layer ratios lie in target +- lambda", lo=0.0, hi=1.0)
    owl_m: float = opt(5.0, "OWL: an outlier is a score above M x the layer's mean", lo=1.0, hi=1000.0)
    blocksize: int = opt(128, "SparseGPT's column block", lo=1, hi=1 << 16)
    dampening: float = opt(0.01, "SparseGPT: lambda = dampening x mean(diag(H))", lo=0.0, hi=10.0)
    fit_to: str = opt("auto", "SparseGPT and Wanda with swaps: fit the dense 'model' or the dense 'layer'",
                      choices=FIT_TARGETS)  # fmt: skip
    order: SweepOrder = opt("auto", "SparseGPT's column sweep (auto: ascending activity, N:M descending)",
                            choices=SWEEP_ORDERS)  # fmt: skip
    row_weight: RowWeight = opt("output", "SparseGPT, unstructured: weigh gate/up rows by their effect on "
                                "the MLP's output, or 'none'", choices=ROW_WEIGHTS)  # fmt: skip
    sequential: Sequential = opt("auto", "prune a layer's linears in turn inside one forward ('linear') or "
                                 "from the dense layer's statistics ('layer')", choices=SEQUENTIALS)  # fmt: skip
    swap_rounds: int = opt(-1, "Wanda: rounds of mask swaps on X^T X; 0: the paper's; -1: per pruner",
                           lo=-1, hi=10_000)  # fmt: skip
    swap_shrink: float = opt(-1.0, "Wanda's swaps: shrink X^T X's off-diagonal by this share toward Wanda's "
                             "diagonal view (0: the full X^T X); -1: per pruner", lo=-1.0, hi=1.0)  # fmt: skip
    fit_share: float = opt(-1.0, "share of the dense model's drift the writers fit, in (0, 1]; -1: per pruner",
                           lo=-1.0, hi=1.0)  # fmt: skip
    magnitude_scope: str = opt("row", "magnitude, unstructured: drop each row's lowest |w|, or the whole layer's "
                               "(llm-compressor's)", choices=("row", "layer"))  # fmt: skip
    selection: str = opt("layer", "SparseGPT, unstructured: each block drops per row what a layer-wide ('layer') or "
                         "per-row ('row') selection gives, or its own lowest scores ('block', the paper's)",
                         choices=("layer", "row", "block"))  # fmt: skip
    hinv: str = opt("solve", "SparseGPT: the inverse Hessian's factor from one Cholesky and a triangular solve, or "
                    "by cholesky_inverse ('textbook', llm-compressor's route)", choices=("solve", "textbook"))  # fmt: skip
    induction: InductionSpec = field(default_factory=InductionSpec)
    calibration: TextSpec = field(default_factory=TextSpec)
    evaluation: EvalSpec = field(default_factory=EvalSpec)
    dtype: str = opt("auto", "the model's dtype in memory and in hf/ (auto: the checkpoint's; a GGUF float32)",
                     public=True, choices=DTYPES, body="options.dtype")  # fmt: skip
    compute_dtype: str = opt("auto", "dtype of the walk's forwards (auto: bfloat16 where native, else the "
                             "model's)", choices=COMPUTE_DTYPES)  # fmt: skip
    attention: str = opt("model", "attention kernel of the calibration walk's forwards: the model's own, or "
                         "'eager' (llm-compressor's)", choices=("model", "eager"))  # fmt: skip
    batch_size: int = opt(8, "calibration sequences per forward", lo=1, hi=4096)

    def resolve(self) -> Plan:
        """Every setting as it runs: ``auto`` and ``-1`` resolved (core.spec.plan)."""
        return _plan(self)

    # Views of the plan, under the names the engine reads.
    @property
    def fits_dense_model(self) -> bool:
        return self.resolve().fits_dense_model

    @property
    def fit_weight(self) -> float:
        return self.resolve().fit_weight

    @property
    def swaps(self) -> int:
        return self.resolve().swaps

    @property
    def wants_hessian(self) -> bool:
        return self.resolve().wants_hessian

    @property
    def hessian_every(self) -> int:
        return self.resolve().hessian_every

    @property
    def walks_in_turn(self) -> bool:
        return self.resolve().walks_in_turn

    @property
    def induction_epochs(self) -> int:
        return self.induction.epochs_for(self.pruner, self.swaps, self.sparsity.is_nm)

    @property
    def induction_scales_skipped(self) -> str | None:
        ind = self.resolve().induction
        return None if ind is None else ind.scales_skipped

    @property
    def induction_fits_model(self) -> bool:
        ind = self.resolve().induction
        return ind is not None and ind.fits_model

    @property
    def recovers(self) -> bool:
        ind = self.resolve().induction
        return ind is not None and ind.recovers

    @property
    def recovery_fits_model(self) -> bool:
        ind = self.resolve().induction
        return ind is not None and ind.recovery_targets == "model"

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> CompressionSpec:
        """Build from the HTTP job body; unknown keys and bad values raise ``SpecError``."""
        values = schema.parse(cls, body)
        sections: dict[str, dict[str, Any]] = {"induction": {}, "calibration": {}, "evaluation": {}}
        top: dict[str, Any] = {}
        for path, value in values.items():
            head, _, rest = path.partition(".")
            if rest:
                sections[head][rest] = value
            else:
                top[path] = value
        spec = cls(
            **top,
            induction=InductionSpec(**sections["induction"]),
            calibration=TextSpec(**sections["calibration"]),
            evaluation=EvalSpec(**sections["evaluation"]),
        )
        spec.validate()
        return spec

    def to_dict(self) -> dict[str, Any]:
        """The job-body shape; ``from_dict(to_dict())`` round-trips."""
        return schema.to_body(self)

    def validate(self) -> None:
        """Each option's bounds, then the combinations (shared by every way of building a spec)."""
        schema.check_fields(self)
        t = traits(self.pruner)
        _check(
            self.allocation != "owl" or not self.sparsity.is_nm,
            "method.allocation",
            "OWL allocation needs an unstructured ratio: an N:M pattern fixes every layer's sparsity",
        )
        _check(
            self.sequential != "linear" or self.walks_in_turn,
            "experimental.sequential",
            "'linear' needs a pruner that reads calibration statistics (wanda, sparsegpt), and induction "
            "off, or its scales skipped",
        )
        _check(
            self.swap_rounds <= 0 or t.swaps,
            "experimental.swap_rounds",
            f"swaps refine Wanda's mask; {self.pruner} "
            + ("is data-free" if not t.reads_data else "changes the weights it keeps"),
        )
        _check(
            self.swap_shrink == -1.0 or 0.0 <= self.swap_shrink <= 1.0,
            "experimental.swap_shrink",
            "must be in [0, 1], or -1 for the default per pruner",
        )
        _check(
            self.swap_shrink <= 0.0 or self.swaps > 0,
            "experimental.swap_shrink",
            f"shrinks the statistics of Wanda's swaps; {self.pruner} runs no swaps here",
        )
        _check(
            self.fit_to != "model" or t.reads_data,
            "experimental.fit_to",
            f"'model' needs a pruner that reads calibration statistics (wanda, sparsegpt), not {self.pruner}",
        )
        _check(
            self.fit_to != "model" or not t.keeps_weights or self.swaps > 0,
            "experimental.fit_to",
            f"{self.pruner} fits the dense model through its swaps: 'model' needs swap_rounds > 0",
        )
        _check(
            self.fit_share == -1.0 or 0.0 < self.fit_share <= 1.0,
            "experimental.fit_share",
            "must be in (0, 1], or -1 for the default per pruner",
        )
        _check(
            self.fit_share == -1.0 or self.fits_dense_model,
            "experimental.fit_share",
            f"{self.pruner} fits the dense layer here, not the dense model: set experimental.fit_to to "
            "'model' (SparseGPT, or Wanda with swaps) or leave fit_share at -1",
        )
        _check(bool(self.calibration.source.strip()), "calibration.source", "must name a text source")


@functools.lru_cache(maxsize=256)
def _plan(spec: CompressionSpec) -> Plan:
    return resolve(spec)


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise SpecError(message, param=param)
