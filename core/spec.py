"""The compression spec: what to prune, how, on which text.

One shape for the CLI, the service and the report. ``CompressionSpec.from_dict`` accepts the
job body of the HTTP API (``{"model", "sparsity", "method", "calibration", "evaluation"}``) and
raises ``SpecError`` whose ``param`` is the dotted path of the bad field.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from core.errors import SpecError

Pruner = Literal["magnitude", "wanda", "sparsegpt"]
Allocation = Literal["uniform", "owl"]
PRUNERS: tuple[str, ...] = ("magnitude", "wanda", "sparsegpt")
ALLOCATIONS: tuple[str, ...] = ("uniform", "owl")
# What SparseGPT's pruned layer is fitted to: the dense model's outputs (correcting the error
# earlier layers left), or the dense layer's outputs on the pruned model's inputs (the paper's).
# "auto" is "model" for SparseGPT at N:M targets and unstructured ratios of at least
# AUTO_FIT_MIN_RATIO, "layer" otherwise. Measured on the benchmark (docs/pruners.md): fitting
# half the model's drift (FIT_SHARES) lowered perplexity at every row measured, 50% (-6.8%), 2:4,
# 4:8 and 70%; below 50% nothing was measured, so the paper's fit stays there.
FIT_TARGETS: tuple[str, ...] = ("auto", "model", "layer")
AUTO_FIT_MIN_RATIO = 0.5
# How far a writer's (o, down) target moves from the dense layer's output on the pruned model's
# inputs (0) towards the dense model's output (1) where the pruner fits the dense model
# (``method.fit_share``, -1: these per pruner): W X + share W (X_d - X) (core.pruners.fit_cross).
# Wanda's swaps can only choose a mask: at 1 they traded the layer's own error for the drift
# (Wanda 2:4 67.98 against 31.81 at 0.25). SparseGPT also updates the kept weights, yet half the
# drift beat all of it too (docs/pruners.md, "How much of the drift to fit").
FIT_SHARES: dict[str, float] = {"wanda": 0.25, "sparsegpt": 0.5}
# SparseGPT's column order (core.pruners.sparsegpt); "auto" is the measured best per structure.
SweepOrder = Literal["auto", "ascending", "descending", "natural"]
SWEEP_ORDERS: tuple[str, ...] = ("auto", "ascending", "descending", "natural")
# How SparseGPT's unstructured selection weighs the rows of one linear against each other
# (core.pruners.sparsegpt ``row_weight``): "output" weighs each output row of the MLP's input
# linears (gate/up, fc1) by how much it moves the MLP's output (docs/pruners.md, "Row weights");
# "none" is the reference (every row's error counts alike).
RowWeight = Literal["output", "none"]
ROW_WEIGHTS: tuple[str, ...] = ("output", "none")
# How the walk prunes one layer (core.walker.prune_in_forward): "linear" prunes q/k/v, o,
# gate/up and down in turn inside one forward of every calibration token, each fitted on what
# the already pruned linears before it produce (two forwards per layer where SparseGPT fits the
# dense model, instead of three); "layer" collects every linear's statistics from the dense
# layer first. "auto" is "linear" where SparseGPT fits the dense model or Wanda refines its mask
# by swaps (WANDA_SWAP_ROUNDS), and one forward of all calibration tokens needs at most
# IN_FORWARD_BYTES of activations; "layer" otherwise (the paper's Wanda and SparseGPT at 50%
# measured no better with "linear"). docs/pruners.md, "Linears in turn".
Sequential = Literal["auto", "linear", "layer"]
SEQUENTIALS: tuple[str, ...] = ("auto", "linear", "layer")
IN_FORWARD_BYTES = 4 << 30
# Wanda's mask refinement (core.swaps): rounds of one swap per row against the layer's full
# X^T X. -1 is the default: WANDA_SWAP_ROUNDS for Wanda, none for the others (magnitude is
# data-free; SparseGPT changes the weights it keeps, so a mask-only swap does not apply).
# docs/pruners.md, "Swaps": measured on SmolLM2 layers, 20 rounds removed most of what 300 did.
WANDA_SWAP_ROUNDS = 20
# The swaps' X^T X reads every WANDA_HESSIAN_EVERY-th calibration token (the norms read all):
# on SmolLM2 layer 15, every 2nd token left the refined layer's held-out error unchanged at 2:4
# and 50% (+0.2%) for half the Gram products; every 4th lost 1.3-2 points of the gain.
WANDA_HESSIAN_EVERY = 2
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
# The dtype of the walk's layer forwards (core.walker.forward_precision): "auto" is bfloat16
# where the hardware multiplies it natively and the model is float32, else the model's dtype
# ("model"). docs/pruners.md, "Forward precision".
COMPUTE_DTYPES: tuple[str, ...] = ("auto", "model", "bfloat16")

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class Sparsity:
    """A sparsity target: an unstructured ratio of zeros, or an N:M pattern.

    N:M follows the NVIDIA / PyTorch semi-structured convention: at most N non-zeros in every
    group of M consecutive weights along the input dimension, so 2:4 and 4:8 are both 50%.
    """

    ratio: float
    n: int | None = None
    m: int | None = None

    @property
    def is_nm(self) -> bool:
        return self.n is not None

    @classmethod
    def parse(cls, value: Any, *, param: str = "sparsity") -> Sparsity:
        if isinstance(value, bool):
            raise SpecError("must be a number in (0, 1) or an 'N:M' string", param=param)
        if isinstance(value, (int, float)):
            ratio = float(value)
            if not 0.0 < ratio < 1.0:
                raise SpecError(f"ratio {value} is not in (0, 1)", param=param)
            return cls(ratio=ratio)
        if isinstance(value, str):
            match = _NM.match(value)
            if match:
                n, m = int(match.group(1)), int(match.group(2))
                if not 0 < n < m:
                    raise SpecError(f"'{value}': N:M needs 0 < N < M", param=param)
                if m > 256:
                    raise SpecError(f"'{value}': M must be at most 256", param=param)
                return cls(ratio=1.0 - n / m, n=n, m=m)
            try:
                return cls.parse(float(value), param=param)
            except ValueError:
                pass
        raise SpecError(
            f"{value!r} is neither a ratio in (0, 1) nor an 'N:M' string such as '2:4'", param=param
        )

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{self.ratio:g}"

    def to_json(self) -> float | str:
        return str(self) if self.is_nm else self.ratio


@dataclass(frozen=True)
class InductionSpec:
    """Sparsity Induction settings (arXiv 2602.21652); see docs/induction.md.

    Defaults (the -1 / "auto" values, resolved per pruner by the ``*_for`` methods) were chosen
    by measurement on SmolLM2-135M (docs/induction.md, "Ablations") under the budget of at most
    3x the time of the pruning step they precede. Magnitude's step reads no data (seconds of
    top-k), so its defaults are the statistics start on one sequence, guarded, without training
    or recovery; ``epochs: 1, recover_epochs: 1, samples: 0`` buys far lower perplexity at ~100x
    that step (docs/induction.md, "Magnitude within the time budget")."""

    enabled: bool = False
    # Passes of training over the layer's calibration inputs. 0 keeps the statistics
    # initialisation alone (still guarded): for magnitude it keeps most of the gain at a sixth of
    # the time (docs/induction.md section 5: "Epochs" and the full-model table). -1: the measured
    # default for the pruner (``epochs_for``: 0 for magnitude).
    epochs: int = -1
    lr: float = 5e-2  # Adam, on log scales
    shifts: bool = True  # shifts only where they fold into an existing bias (see docs)
    qk_scale: bool = True
    reg: float = 1e-4  # weight of the regulariser on the scaled weights
    mask: Literal["ste", "soft"] = "ste"
    batch_size: int = 4
    temperature: float = 0.05  # width of the mask's sigmoid, in log-score units (docs/induction.md)
    init: str = "auto"  # initial scales: auto (per pruner, measured) | one | mean | median | rms
    init_alpha: float = 1.0  # exponent: s_j = statistic_j ** init_alpha (unless init is auto or one)
    per_linear: bool = True  # also learn a per-linear importance (passed as col_weight, not folded)
    # N:M only: permute the inputs of o and down so each group of M holds channels that do not
    # compete (core/induction/permute.py); exact, and the one transform SparseGPT is not invariant to.
    permute: bool = True
    # Rounds of the swap search per permuted input; -1: the measured default for the pruner
    # (``rounds_for``: more where the pruning step is long enough to pay for them).
    permute_rounds: int = -1
    # What the pruned block is trained and guarded against: "layer", the dense layer's output on
    # the pruned model's inputs (the paper's); "model", the dense model's own output of the layer
    # (its activations walk alongside, as for SparseGPT's fit to the model), so the scales also
    # steer the masks to undo the drift earlier layers left; "auto": model where the scales train
    # (measured better, docs/induction.md, "Targets"), layer where only the statistics start is
    # guarded (``epochs`` 0: the dense model's stream would cost a pass over every sequence).
    targets: Literal["auto", "model", "layer"] = "auto"
    # Recovery scales (core/induction/recover.py, docs/induction.md "Recovery"): after the pruner,
    # one output and one input scale per linear, trained against the pruned block with its mask
    # fixed (against ``targets``) and folded into the sparse weights, where zeros stay zeros.
    # Passes over the layer's calibration sequences (one sequence per step); 0: off; -1: the
    # measured default (``recover_epochs_for``: 1, but 0 for magnitude).
    recover_epochs: int = -1
    recover_lr: float = 1e-2  # Adam, on the recovery log-scales
    # Adam's learning rate on an additive update of each linear's kept weights, trained with the
    # recovery scales (the mask fixed, so zeros stay zeros), in units of the linear's mean kept
    # weight; 0: scales only. 6e-3: measured (SparseGPT 2:4 20.18 -> 19.17 over the scales alone;
    # where the update overfits a layer's training sequences the guard keeps it as pruned;
    # docs/induction.md "Recovery of the kept weights").
    recover_weights_lr: float = 6e-3
    # Calibration sequences the induction stage trains, guards and takes statistics on (the first
    # ones); 0: all; -1: the measured default (``samples_for``: all, but 1 for magnitude). Fewer
    # trade quality for time: magnitude's pruning step reads no data, and one sequence keeps its
    # statistics start within 3x of that step (docs/induction.md, "Magnitude within the time budget").
    samples: int = -1

    def recover_epochs_for(self, pruner: str) -> int:
        """The recovery passes to run: ``recover_epochs``, or where it is -1, 1 (measured,
        docs/induction.md "Recovery"), except 0 for magnitude: one pass costs ~60x its data-free
        pruning step."""
        if self.recover_epochs >= 0:
            return self.recover_epochs
        return 0 if pruner == "magnitude" else 1

    def samples_for(self, pruner: str) -> int:
        """The calibration sequences induction reads (0: all): ``samples``, or where it is -1, all,
        except 1 for magnitude, whose budget (3x a step of seconds) pays for about three forward
        passes of the layer on one sequence (the statistics, and the guard's two checks)."""
        if self.samples >= 0:
            return self.samples
        return 1 if pruner == "magnitude" else 0

    def epochs_for(self, pruner: str, swaps: int, nm: bool) -> int:
        """The training passes to run: ``epochs``, or where it is -1, 1, except 0 where trained
        scales were measured never to win (docs/induction.md, "Where the scales are skipped"):
        Wanda with swaps (``swaps`` rounds > 0), which refine any starting mask on each linear's
        own X^T X, an objective no exact rescaling changes; and SparseGPT at an unstructured
        target (``nm`` False), whose update absorbs what the scales could re-rank (the guard
        kept plain pruning on 30 of 30 layers, at 3x the pruning step); and magnitude, whose
        budget does not pay for a pass of training (the statistics start keeps most of the gain,
        docs/induction.md, "Magnitude within the time budget")."""
        if self.epochs >= 0:
            return self.epochs
        if (pruner == "wanda" and swaps > 0) or (pruner == "sparsegpt" and not nm) or pruner == "magnitude":
            return 0
        return 1

    def rounds_for(self, pruner: str, *, trains: bool = True) -> int:
        """The swap-search rounds to run: ``permute_rounds``, or where it is -1, 100 for SparseGPT
        (its search converges by then and costs under half its pruning step), 10 for magnitude
        and Wanda with training, which already takes most of the 3x budget, and 50 for Wanda
        without (``trains`` False: the permutation is then all of induction's work)
        (docs/induction.md, "N:M channel permutation"); 0 (no permutation) for magnitude without
        training, whose budget of 3x a data-free step the search alone would exceed 25-fold."""
        if self.permute_rounds >= 0:
            return self.permute_rounds
        if pruner == "sparsegpt":
            return 100
        if pruner == "magnitude" and not trains:
            return 0
        return 10 if trains else 50


@dataclass(frozen=True)
class TextSpec:
    """A text source and how to sample it: ``pydoc``, a dataset name, or a .txt/.jsonl path."""

    source: str = "pydoc"
    samples: int = 32
    seq_len: int = 512
    seed: int = 0
    field: str = "text"  # jsonl field holding the text


@dataclass(frozen=True)
class EvalSpec:
    sources: tuple[str, ...] = ("pydoc",)
    seq_len: int = 512
    max_windows: int = 40
    batch_size: int = 4
    dense: bool = True  # also evaluate the dense model (off when its perplexity is already known)


@dataclass(frozen=True)
class CompressionSpec:
    model: str
    sparsity: Sparsity
    pruner: Pruner = "wanda"
    allocation: Allocation = "uniform"
    owl_lambda: float = 0.08  # OWL: per-layer ratios lie in target +- lambda
    owl_m: float = 5.0  # OWL: an outlier is a score above M x the layer's mean score
    blocksize: int = 128  # SparseGPT
    dampening: float = 0.01  # SparseGPT: lambda = dampening x mean(diag(H))
    fit_to: str = "auto"  # SparseGPT: one of FIT_TARGETS
    order: SweepOrder = "auto"  # SparseGPT: the column sweep order (docs/pruners.md, "Sweep order")
    row_weight: RowWeight = "output"  # SparseGPT, unstructured: one of ROW_WEIGHTS
    sequential: Sequential = "auto"  # SparseGPT fitting the dense model, Wanda with swaps: SEQUENTIALS
    swap_rounds: int = -1  # Wanda's mask refinement (core.swaps); -1: the default per pruner
    fit_share: float = -1.0  # share of the dense model's drift the writers fit; -1: FIT_SHARES
    induction: InductionSpec = field(default_factory=InductionSpec)
    calibration: TextSpec = field(default_factory=TextSpec)
    evaluation: EvalSpec = field(default_factory=EvalSpec)
    dtype: str = "float32"
    compute_dtype: str = "auto"  # one of COMPUTE_DTYPES
    batch_size: int = 8  # calibration sequences per forward pass

    @property
    def fits_dense_model(self) -> bool:
        """The pruner fits the dense model's outputs (``fit_to``), not the dense layer's: SparseGPT's
        update, Wanda's swaps (core.pruners.fit_cross)."""
        if self.pruner == "magnitude" or self.fit_to == "layer":
            return False
        if self.pruner == "wanda":
            # Wanda fits through its swaps only (its own ranking starts them), and only when asked:
            # "auto" is "layer" for Wanda, whose fit costs a float32 forward of the writers and
            # their cross statistics, 1.5-2.1x its step (docs/pruners.md, "Fitting the dense model
            # through the swaps").
            return self.fit_to == "model" and self.swaps > 0  # (swaps 0: validate refuses "model")
        return self.fit_to == "model" or self.sparsity.is_nm or self.sparsity.ratio >= AUTO_FIT_MIN_RATIO

    @property
    def fit_weight(self) -> float:
        """The share of the dense model's drift the writers fit (``fit_share``, -1 resolved per
        pruner); 0 where the pruner fits the dense layer."""
        if not self.fits_dense_model:
            return 0.0
        return self.fit_share if self.fit_share >= 0 else FIT_SHARES[self.pruner]

    @property
    def _induction_trains(self) -> bool:
        """Induction is on and would learn scales: training passes, or a statistics start."""
        ind = self.induction
        return ind.enabled and (self.induction_epochs > 0 or ind.init not in ("auto", "one"))

    @property
    def swaps(self) -> int:
        """Rounds of Wanda's swap refinement to run (``swap_rounds``, -1 resolved per pruner)."""
        if self.swap_rounds >= 0:
            return self.swap_rounds
        return WANDA_SWAP_ROUNDS if self.pruner == "wanda" else 0

    @property
    def wants_hessian(self) -> bool:
        """The pruning step reads each linear's full X^T X: SparseGPT, and Wanda's swaps."""
        return self.pruner == "sparsegpt" or self.swaps > 0

    @property
    def hessian_every(self) -> int:
        """The Hessian reads every n-th calibration token: all for SparseGPT, fewer for Wanda's swaps."""
        # (the writers fitted to the dense model read every token anyway: their cross statistics
        # need them, walker.prune_in_forward)
        return 1 if self.pruner == "sparsegpt" else WANDA_HESSIAN_EVERY

    @property
    def induction_epochs(self) -> int:
        """Induction's training passes per layer, resolved (``InductionSpec.epochs_for``)."""
        return self.induction.epochs_for(self.pruner, self.swaps, self.sparsity.is_nm)

    @property
    def induction_scales_skipped(self) -> str | None:
        """Why induction's scales are not learned for this job (it then only permutes N:M groups,
        where ``induction.permute``), or None where they are. SparseGPT fitting the dense model:
        the scales made it worse (core/compress.py). No training where it was measured never to
        win (``InductionSpec.epochs_for``): Wanda's and SparseGPT's scales would start at 1,
        which is plain pruning (docs/induction.md, "Where the scales are skipped")."""
        if not self.induction.enabled:
            return None
        if self.fits_dense_model and (self.pruner == "sparsegpt" or self._induction_trains):
            return f"scales: {self.pruner} fits the dense model (method.fit_to; 'layer' trains them)"
        if self._induction_trains:
            return None
        if self.pruner == "wanda" and self.swaps > 0:
            return "scales: wanda's swaps refine any start on X^T X, which no exact rescaling changes"
        if self.pruner == "sparsegpt":
            return "scales: sparsegpt's update keeps plain pruning's result at unstructured targets"
        return None

    @property
    def induction_fits_model(self) -> bool:
        """Induction's scales train against the dense model's outputs (``InductionSpec.targets``):
        the walk then carries the dense model's activations alongside the pruned model's."""
        learns = self.induction.enabled and self.induction_scales_skipped is None
        targets = self.induction.targets
        return learns and (targets == "model" or (targets == "auto" and self.induction_epochs > 0))

    @property
    def recovers(self) -> bool:
        """Induction's recovery scales run after the pruner on every layer."""
        return self.induction.enabled and self.induction.recover_epochs_for(self.pruner) > 0

    @property
    def recovery_fits_model(self) -> bool:
        """The recovery scales train against the dense model's outputs (``InductionSpec.targets``):
        with "model", and with "auto" where the walk carries the dense model's activations anyway
        (SparseGPT's fit to the dense model, induction's scales trained against it). Elsewhere
        "auto" means the dense layer's outputs, which cost no extra pass and were measured as good
        (Wanda 2:4: 28.25 against the dense layer, 28.76 against the dense model)."""
        if not self.recovers or self.induction.targets == "layer":
            return False
        return self.induction.targets == "model" or self.fits_dense_model or self.induction_fits_model

    @property
    def walks_in_turn(self) -> bool:
        """The layer's linears can be pruned in turn inside its forward (``method.sequential``):
        the pruner reads statistics (not magnitude), and induction, which trains on the whole
        layer's statistics before any pruning, is off or its scales skipped
        (``induction_scales_skipped``; its N:M permutation is chosen inside the forward)."""
        learns = self.induction.enabled and self.induction_scales_skipped is None
        return self.pruner != "magnitude" and not learns

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> CompressionSpec:
        """Build from the HTTP job body; unknown keys and bad values raise ``SpecError``."""
        body = dict(body)
        _require_keys(body, {"model", "sparsity", "method", "calibration", "evaluation", "options"}, "")
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            raise SpecError("must be a non-empty string naming the model", param="model")
        if "sparsity" not in body:
            raise SpecError("is required", param="sparsity")
        sparsity = Sparsity.parse(body["sparsity"])
        method = _section(body, "method")
        _require_keys(
            method,
            {
                "pruner",
                "allocation",
                "induction",
                "owl_lambda",
                "owl_m",
                "blocksize",
                "dampening",
                "fit_to",
                "order",
                "row_weight",
                "sequential",
                "swap_rounds",
                "fit_share",
            },
            "method",
        )
        pruner = method.get("pruner", "wanda")
        if pruner not in PRUNERS:
            raise SpecError(f"{pruner!r} is not one of {', '.join(PRUNERS)}", param="method.pruner")
        allocation = method.get("allocation", "uniform")
        if allocation not in ALLOCATIONS:
            raise SpecError(
                f"{allocation!r} is not one of {', '.join(ALLOCATIONS)}", param="method.allocation"
            )
        if allocation == "owl" and sparsity.is_nm:
            raise SpecError(
                "OWL allocation needs an unstructured ratio: an N:M pattern fixes every layer's sparsity",
                param="method.allocation",
            )
        induction = _build(InductionSpec, _section(method, "induction"), "method.induction")
        options = _section(body, "options")
        _require_keys(options, {"dtype", "compute_dtype", "batch_size"}, "options")
        spec = cls(
            model=model.strip(),
            sparsity=sparsity,
            pruner=pruner,
            allocation=allocation,
            owl_lambda=_number(method, "owl_lambda", 0.08, "method", lo=0.0, hi=1.0),
            owl_m=_number(method, "owl_m", 5.0, "method", lo=1.0, hi=1000.0),
            blocksize=int(_number(method, "blocksize", 128, "method", lo=1, hi=1 << 16, integer=True)),
            dampening=_number(method, "dampening", 0.01, "method", lo=0.0, hi=10.0),
            fit_to=method.get("fit_to", "auto"),
            order=method.get("order", "auto"),
            row_weight=method.get("row_weight", "output"),
            sequential=method.get("sequential", "auto"),
            swap_rounds=int(_number(method, "swap_rounds", -1, "method", lo=-1, hi=10_000, integer=True)),
            fit_share=_number(method, "fit_share", -1.0, "method", lo=-1.0, hi=1.0),
            induction=induction,
            calibration=_build(TextSpec, _section(body, "calibration"), "calibration"),
            evaluation=_build(EvalSpec, _section(body, "evaluation"), "evaluation"),
            dtype=str(options.get("dtype", "float32")),
            compute_dtype=str(options.get("compute_dtype", "auto")),
            batch_size=int(_number(options, "batch_size", 8, "options", lo=1, hi=4096, integer=True)),
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        """Range checks shared by every way of building a spec."""
        if self.dtype not in DTYPES:
            raise SpecError(f"{self.dtype!r} is not one of {', '.join(DTYPES)}", param="options.dtype")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise SpecError(
                f"{self.compute_dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}",
                param="options.compute_dtype",
            )
        cal, ev, ind = self.calibration, self.evaluation, self.induction
        _check(
            self.fit_to in FIT_TARGETS,
            "method.fit_to",
            f"must be one of {', '.join(FIT_TARGETS)}",
        )
        _check(self.order in SWEEP_ORDERS, "method.order", f"must be one of {', '.join(SWEEP_ORDERS)}")
        _check(
            self.row_weight in ROW_WEIGHTS, "method.row_weight", f"must be one of {', '.join(ROW_WEIGHTS)}"
        )
        _check(
            self.sequential in SEQUENTIALS, "method.sequential", f"must be one of {', '.join(SEQUENTIALS)}"
        )
        _check(
            self.sequential != "linear" or self.walks_in_turn,
            "method.sequential",
            "'linear' needs a pruner that reads calibration statistics (wanda, sparsegpt), and "
            "induction off, or its scales skipped (SparseGPT fitting the dense model, or no "
            "induction epochs for Wanda with swaps or SparseGPT)",
        )
        _check(
            -1 <= self.swap_rounds <= 10_000,
            "method.swap_rounds",
            "must be between 0 and 10000, or -1 for the default",
        )
        _check(
            self.swap_rounds <= 0 or self.pruner == "wanda",
            "method.swap_rounds",
            f"swaps refine Wanda's mask; {self.pruner} "
            + ("is data-free" if self.pruner == "magnitude" else "changes the weights it keeps"),
        )
        _check(
            self.fit_to != "model" or self.pruner != "magnitude",
            "method.fit_to",
            "'model' needs a pruner that reads calibration statistics (wanda, sparsegpt), not magnitude",
        )
        _check(
            self.fit_to != "model" or self.pruner != "wanda" or self.swaps > 0,
            "method.fit_to",
            "Wanda fits the dense model through its swaps: 'model' needs swap_rounds > 0",
        )
        _check(
            self.fit_share == -1.0 or 0.0 < self.fit_share <= 1.0,
            "method.fit_share",
            "must be in (0, 1], or -1 for the default per pruner",
        )
        _check(
            self.fit_share == -1.0 or self.fits_dense_model,
            "method.fit_share",
            f"{self.pruner} fits the dense layer here, not the dense model: set method.fit_to to "
            "'model' (SparseGPT, or Wanda with swaps) or leave fit_share at -1",
        )
        _check(1 <= cal.samples <= 100_000, "calibration.samples", "must be between 1 and 100000")
        _check(8 <= cal.seq_len <= 131_072, "calibration.seq_len", "must be between 8 and 131072")
        _check(bool(cal.source.strip()), "calibration.source", "must name a text source")
        _check(8 <= ev.seq_len <= 131_072, "evaluation.seq_len", "must be between 8 and 131072")
        _check(1 <= ev.max_windows <= 100_000, "evaluation.max_windows", "must be at least 1")
        _check(1 <= ev.batch_size <= 4096, "evaluation.batch_size", "must be at least 1")
        _check(
            -1 <= ind.epochs <= 100,
            "method.induction.epochs",
            "must be between 0 and 100, or -1 for the default",
        )
        _check(0.0 < ind.lr <= 1.0, "method.induction.lr", "must be in (0, 1]")
        _check(ind.reg >= 0.0, "method.induction.reg", "must be >= 0")
        _check(ind.mask in ("ste", "soft"), "method.induction.mask", "must be 'ste' or 'soft'")
        _check(1 <= ind.batch_size <= 4096, "method.induction.batch_size", "must be at least 1")
        _check(0.0 < ind.temperature <= 100.0, "method.induction.temperature", "must be in (0, 100]")
        _check(
            ind.init in ("auto", "one", "mean", "median", "rms"),
            "method.induction.init",
            "must be one of auto, one, mean, median, rms",
        )
        _check(-4.0 <= ind.init_alpha <= 4.0, "method.induction.init_alpha", "must be between -4 and 4")
        _check(
            ind.targets in ("auto", "model", "layer"),
            "method.induction.targets",
            "must be one of auto, model, layer",
        )
        _check(
            -1 <= ind.recover_epochs <= 100,
            "method.induction.recover_epochs",
            "must be between 0 and 100, or -1 for the default",
        )
        _check(0.0 < ind.recover_lr <= 1.0, "method.induction.recover_lr", "must be in (0, 1]")
        _check(
            -1 <= ind.samples <= 100_000,
            "method.induction.samples",
            "must be between 1 and 100000, 0 for every calibration sequence, or -1 for the default",
        )
        _check(
            0.0 <= ind.recover_weights_lr <= 1.0, "method.induction.recover_weights_lr", "must be in [0, 1]"
        )
        _check(
            -1 <= ind.permute_rounds <= 10000,
            "method.induction.permute_rounds",
            "must be between 0 and 10000, or -1 for the default",
        )

    def to_dict(self) -> dict[str, Any]:
        """The job-body shape; ``from_dict(to_dict())`` round-trips."""
        return {
            "model": self.model,
            "sparsity": self.sparsity.to_json(),
            "method": {
                "pruner": self.pruner,
                "allocation": self.allocation,
                "owl_lambda": self.owl_lambda,
                "owl_m": self.owl_m,
                "blocksize": self.blocksize,
                "dampening": self.dampening,
                "fit_to": self.fit_to,
                "order": self.order,
                "row_weight": self.row_weight,
                "sequential": self.sequential,
                "swap_rounds": self.swap_rounds,
                "fit_share": self.fit_share,
                "induction": dataclasses.asdict(self.induction),
            },
            "calibration": dataclasses.asdict(self.calibration),
            "evaluation": {**dataclasses.asdict(self.evaluation), "sources": list(self.evaluation.sources)},
            "options": {
                "dtype": self.dtype,
                "compute_dtype": self.compute_dtype,
                "batch_size": self.batch_size,
            },
        }


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise SpecError(message, param=param)


def _require_keys(section: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in section:
        if key not in allowed:
            path = f"{where}.{key}" if where else key
            raise SpecError(f"unknown field; allowed: {', '.join(sorted(allowed))}", param=path)


def _section(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name) or {}
    if not isinstance(value, dict):
        raise SpecError("must be an object", param=name)
    return dict(value)


def _number(
    section: dict[str, Any],
    key: str,
    default: float,
    where: str,
    *,
    lo: float,
    hi: float,
    integer: bool = False,
) -> float:
    value = section.get(key, default)
    param = f"{where}.{key}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError("must be a number", param=param)
    if integer and int(value) != value:
        raise SpecError("must be an integer", param=param)
    if not lo <= value <= hi:
        raise SpecError(f"must be between {lo:g} and {hi:g}", param=param)
    return float(value)


def _build(kind: type[Any], values: dict[str, Any], where: str) -> Any:
    """Instantiate a flat dataclass from a dict, type-checking each field against its default."""
    defaults = kind()
    known = {f.name for f in dataclasses.fields(kind)}
    _require_keys(values, known, where)
    out: dict[str, Any] = {}
    for name, value in values.items():
        param = f"{where}.{name}"
        expected = getattr(defaults, name)
        if isinstance(expected, bool):
            if not isinstance(value, bool):
                raise SpecError("must be true or false", param=param)
        elif isinstance(expected, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpecError("must be an integer", param=param)
        elif isinstance(expected, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SpecError("must be a number", param=param)
            value = float(value)
        elif isinstance(expected, str):
            if not isinstance(value, str):
                raise SpecError("must be a string", param=param)
        elif isinstance(expected, tuple):
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SpecError("must be a list of strings", param=param)
            value = tuple(value)
        out[name] = value
    return kind(**out)
