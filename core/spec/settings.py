"""The spec's sections: Sparsity Induction, calibration text and evaluation, each option declared once.

Defaults here are the ``default`` preset's (core.spec.presets lists what ``reference`` changes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from spruce.core.spec.fields import opt
from spruce.core.spec.traits import traits

SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit; torch's accept more


@dataclass(frozen=True)
class InductionSpec:
    """Sparsity Induction (arXiv 2602.21652); docs/induction.md. ``enabled`` is the public switch;
    the rest is experimental, and -1 / "auto" resolve per pruner (the ``*_for`` methods, from
    ``core.spec.traits``), chosen within 3x the time of the pruning step they precede."""

    # On by default: with its kept-weight recovery it beat plain pruning on text it was not
    # calibrated on, on every row and model measured (docs/induction.md, "Out of domain").
    enabled: bool = opt(True, "run Sparsity Induction around the pruner (--no-induction: the pruner alone)",
                        public=True, body="method.induction", flag="--induction")  # fmt: skip
    epochs: int = opt(
        -1, "training passes per layer; 0 keeps the statistics start; -1: per pruner", lo=-1, hi=100
    )
    lr: float = opt(5e-2, "Adam's rate on the log-scales", lo=0.0, lo_open=True, hi=1.0)
    shifts: bool = opt(True, "learn shifts where they fold into an existing bias")
    qk_scale: bool = opt(True, "learn the query/key scale pair")
    reg: float = opt(1e-4, "weight of the spectral regulariser on the scaled weights", lo=0.0, hi=1e6)
    mask: Literal["ste", "soft"] = opt("ste", "the mask while training", choices=("ste", "soft"))
    batch_size: int = opt(4, "sequences per training step", lo=1, hi=4096)
    temperature: float = opt(0.05, "width of the soft mask's sigmoid, in log-score units", lo=0.0, lo_open=True,
                             hi=100.0)  # fmt: skip
    init: str = opt(
        "auto", "initial scales (auto: per pruner)", choices=("auto", "one", "mean", "median", "rms")
    )
    init_alpha: float = opt(1.0, "exponent of the statistic start: s = stat ** init_alpha", lo=-4.0, hi=4.0)
    per_linear: bool = opt(True, "also learn a per-linear importance (the pruner's col_weight)")
    permute: bool = opt(
        True, "N:M: permute the inputs of o and down so each group holds non-competing channels"
    )
    permute_rounds: int = opt(-1, "rounds of the permutation search; -1: per pruner", lo=-1, hi=10_000)
    targets: Literal["auto", "model", "layer"] = opt(
        "auto", "train and guard against the dense model's outputs (model) or the dense layer's (layer); "
        "auto: model where the scales train", choices=("auto", "model", "layer"),
    )  # fmt: skip
    recover_epochs: int = opt(-1, "passes of the recovery scales after the pruner; 0: off; -1: per pruner",
                              lo=-1, hi=100)  # fmt: skip
    recover_lr: float = opt(1e-2, "Adam's rate on the recovery log-scales", lo=0.0, lo_open=True, hi=1.0)
    recover_weights_lr: float = opt(6e-3, "recovery's step on the kept weights, relative to their mean; 0: scales only",
                                    lo=0.0, hi=1.0)  # fmt: skip
    samples: int = opt(
        -1, "first calibration sequences induction reads; 0: all; -1: per pruner", lo=-1, hi=100_000
    )

    def recover_epochs_for(self, pruner: str) -> int:
        """The recovery passes to run: ``recover_epochs``, or the pruner's default where it is -1."""
        return self.recover_epochs if self.recover_epochs >= 0 else traits(pruner).recover_epochs

    def samples_for(self, pruner: str) -> int:
        """The calibration sequences induction reads (0: all): ``samples``, or the pruner's default."""
        return self.samples if self.samples >= 0 else traits(pruner).induction_samples

    def epochs_for(self, pruner: str, swaps: int, nm: bool) -> int:
        """The training passes: ``epochs``, or where it is -1 the pruner's default, and 0 where the
        scales were measured never to win: a mask refined by swaps (``swaps`` > 0), an update that
        absorbs them at unstructured targets (docs/induction.md, "Where the scales are skipped")."""
        if self.epochs >= 0:
            return self.epochs
        t = traits(pruner)
        if (t.swaps and swaps > 0) or (t.scales_skip_unstructured and not nm):
            return 0
        return t.induction_epochs

    def rounds_for(self, pruner: str, *, trains: bool = True) -> int:
        """The permutation's search rounds: ``permute_rounds``, or the pruner's default with and
        without training (docs/induction.md, "N:M channel permutation")."""
        if self.permute_rounds >= 0:
            return self.permute_rounds
        with_training, without = traits(pruner).permute_rounds
        return with_training if trains else without


@dataclass(frozen=True)
class TextSpec:
    """A text source and how to sample it: ``pydoc``, a dataset name, or a .txt/.jsonl path."""

    source: str = opt("pydoc", "'pydoc', 'wikitext2', 'c4', an uploaded dataset id or a .txt/.jsonl path",
                      public=True, flag="--calib")  # fmt: skip
    samples: int = opt(32, "calibration sequences", public=True, lo=1, hi=100_000)
    seq_len: int = opt(512, "tokens per calibration sequence", public=True, lo=8, hi=131_072)
    seed: int = opt(0, "seed of the sampling", public=True, lo=0, hi=SEED_MAX)
    field: str = opt("text", "jsonl field holding the text")


@dataclass(frozen=True)
class EvalSpec:
    """Where perplexity is measured, and which lm-evaluation-harness tasks run (docs/evaluation.md)."""

    sources: tuple[str, ...] = opt(("pydoc",), "evaluation texts ('none': skip evaluation)", public=True,
                                   flag="--eval")  # fmt: skip
    seq_len: int = opt(512, "tokens per evaluation window", lo=8, hi=131_072)
    max_windows: int = opt(40, "at most this many windows per text", lo=1, hi=100_000)
    batch_size: int = opt(4, "windows per forward", lo=1, hi=4096)
    dense: bool = opt(True, "also evaluate the dense model")
    tasks: tuple[str, ...] = opt((), "lm-evaluation-harness tasks: names (hellaswag) or, run locally, task YAML "
                                 "paths; needs the eval extra")  # fmt: skip
    task_limit: int = opt(0, "at most this many examples per lm-eval task; 0: all", lo=0, hi=1_000_000)
