"""What each pruner is, as the rest of the engine needs to know it: one table, no name tests.

The per-pruner defaults of the ``default`` preset live here too (the ``-1`` / ``auto`` settings
resolve through them: core.spec.plan). Why each value: docs/pruners.md and docs/induction.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Pruner = Literal["magnitude", "wanda", "sparsegpt"]  # the table's keys, for type checkers

# What each weight's score multiplies |w_ij| by, a factor of its input channel j: nothing
# ("weight": data-free), ||X_j|| ("norm": Wanda's), or 1/[H^-1]_jj ("obs": the optimal brain
# surgeon's, read off X^T X). Pruning (core.pruners), the permutation's costs
# (core.induction.permute) and induction's trainer each compute it by this kind.
Score = Literal["weight", "norm", "obs"]


@dataclass(frozen=True)
class Traits:
    score: Score  # what its score reads beside |w| (``Score``)
    keeps_weights: bool  # it only chooses a mask (SparseGPT also updates the weights it keeps)
    selects_per_block: bool  # unstructured: the mask is chosen per block of ``blocksize`` columns
    swap_rounds: int  # default rounds of mask swaps (core.swaps); only data-reading mask pruners swap
    swap_shrink: float  # default share of X^T X's off-diagonal the swaps drop (core.swaps)
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
    def reads_data(self) -> bool:
        """Its step reads calibration statistics (magnitude is data-free)."""
        return self.score != "weight"

    @property
    def needs_hessian(self) -> bool:
        """Its own step reads each linear's full X^T X."""
        return self.score == "obs"

    @property
    def swaps(self) -> bool:
        """It can refine its mask by swaps: a mask pruner that reads statistics (Wanda)."""
        return self.reads_data and self.keeps_weights

    def wants_hessian(self, swap_rounds: int) -> bool:
        """Whether the statistics carry each input's Gram matrix X^T X: its own step reads it, or
        its swaps do (``swap_rounds`` > 0). The one rule; ``Plan.wants_hessian`` records it."""
        return self.needs_hessian or (self.swaps and swap_rounds > 0)

    @property
    def rescaling_invariant(self) -> bool:
        """Its score does not change under an exact rescaling of the input channels (the channel
        factor absorbs it), so induction hands it the scales as ``col_weight``; magnitude's |w|
        reads the folded weight, which already carries them."""
        return self.reads_data


# docs/pruners.md ("Swaps", "Fitting the dense model", "How much of the drift to fit") and
# docs/induction.md ("Where the scales are skipped", "Magnitude within the time budget",
# "Recovery", "N:M channel permutation", "Initialisation").
PRUNER_TRAITS: dict[str, Traits] = {
    "magnitude": Traits(
        score="weight", keeps_weights=True, selects_per_block=False, swap_rounds=0, swap_shrink=0.0,
        fits_model_auto=False, fit_share=0.0, hessian_every=2, induction_epochs=0,
        scales_skip_unstructured=False, induction_samples=1, recover_epochs=0,
        permute_rounds=(10, 0), induction_init=("rms", 1.0),
    ),
    "wanda": Traits(
        score="norm", keeps_weights=True, selects_per_block=False, swap_rounds=20, swap_shrink=0.5,
        fits_model_auto=False, fit_share=0.25, hessian_every=2, induction_epochs=1,
        scales_skip_unstructured=False, induction_samples=0, recover_epochs=1,
        permute_rounds=(10, 50), induction_init=("one", 0.0),
    ),
    "sparsegpt": Traits(
        score="obs", keeps_weights=False, selects_per_block=True, swap_rounds=0, swap_shrink=0.0,
        fits_model_auto=True, fit_share=0.5, hessian_every=1, induction_epochs=1,
        scales_skip_unstructured=True, induction_samples=0, recover_epochs=1,
        permute_rounds=(100, 100), induction_init=("one", 0.0),
    ),
}  # fmt: skip
PRUNERS: tuple[str, ...] = tuple(PRUNER_TRAITS)

# The fit shares per pruner that fits the dense model (the traits' values, for readers of the old name).
FIT_SHARES: dict[str, float] = {p: t.fit_share for p, t in PRUNER_TRAITS.items() if t.fit_share > 0}


def traits(pruner: str) -> Traits:
    return PRUNER_TRAITS[pruner]
