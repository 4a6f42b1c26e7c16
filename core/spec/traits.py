"""What each pruner is, as the rest of the engine needs to know it: one table, no name tests.

The per-pruner defaults of the ``default`` preset live here too (the ``-1`` / ``auto`` settings
resolve through them: core.spec.plan). Why each value: docs/pruners.md and docs/induction.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Pruner = Literal["magnitude", "wanda", "sparsegpt"]
PRUNERS: tuple[str, ...] = ("magnitude", "wanda", "sparsegpt")


@dataclass(frozen=True)
class Traits:
    reads_data: bool  # its step reads calibration statistics (magnitude is data-free)
    keeps_weights: bool  # it only chooses a mask (SparseGPT also updates the weights it keeps)
    needs_hessian: bool  # its own step reads each linear's full X^T X
    swap_rounds: int  # default rounds of mask swaps (core.swaps); only data-reading mask pruners swap
    fits_model_auto: bool  # fit_to "auto" fits the dense model at N:M and ratios >= AUTO_FIT_MIN_RATIO
    fit_share: float  # default share of the dense model's drift the writers fit (core.pruners.fit_cross)
    hessian_every: int  # the X^T X reads every n-th calibration token
    induction_epochs: int  # default training passes of induction's scales
    scales_skip_unstructured: bool  # its update absorbs what the scales re-rank at unstructured targets
    induction_samples: int  # default calibration sequences induction reads (0: all)
    recover_epochs: int  # default passes of the recovery scales after the pruner
    permute_rounds: tuple[int, int]  # default N:M permutation search rounds: (scales train, they do not)
    induction_init: tuple[str, float]  # induction's "auto" start: (statistic, exponent)

    @property
    def swaps(self) -> bool:
        """It can refine its mask by swaps: a mask pruner that reads statistics (Wanda)."""
        return self.reads_data and self.keeps_weights


# docs/pruners.md ("Swaps", "Fitting the dense model", "How much of the drift to fit") and
# docs/induction.md ("Where the scales are skipped", "Magnitude within the time budget",
# "Recovery", "N:M channel permutation", "Initialisation").
PRUNER_TRAITS: dict[str, Traits] = {
    "magnitude": Traits(
        reads_data=False, keeps_weights=True, needs_hessian=False, swap_rounds=0,
        fits_model_auto=False, fit_share=0.0, hessian_every=2, induction_epochs=0,
        scales_skip_unstructured=False, induction_samples=1, recover_epochs=0,
        permute_rounds=(10, 0), induction_init=("rms", 1.0),
    ),
    "wanda": Traits(
        reads_data=True, keeps_weights=True, needs_hessian=False, swap_rounds=20,
        fits_model_auto=False, fit_share=0.25, hessian_every=2, induction_epochs=1,
        scales_skip_unstructured=False, induction_samples=0, recover_epochs=1,
        permute_rounds=(10, 50), induction_init=("one", 0.0),
    ),
    "sparsegpt": Traits(
        reads_data=True, keeps_weights=False, needs_hessian=True, swap_rounds=0,
        fits_model_auto=True, fit_share=0.5, hessian_every=1, induction_epochs=1,
        scales_skip_unstructured=True, induction_samples=0, recover_epochs=1,
        permute_rounds=(100, 100), induction_init=("one", 0.0),
    ),
}  # fmt: skip

# The fit shares per pruner that fits the dense model (the traits' values, for readers of the old name).
FIT_SHARES: dict[str, float] = {p: t.fit_share for p, t in PRUNER_TRAITS.items() if t.fit_share > 0}
WANDA_SWAP_ROUNDS = PRUNER_TRAITS["wanda"].swap_rounds
WANDA_HESSIAN_EVERY = PRUNER_TRAITS["wanda"].hessian_every


def traits(pruner: str) -> Traits:
    return PRUNER_TRAITS[pruner]
