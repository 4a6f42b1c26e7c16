"""OWL: Outlier Weighed Layerwise sparsity (Yin et al., 2023).

Layers whose Wanda scores hold more outliers (scores above M times the layer's mean score)
matter more, so they are pruned less. OWL maps each layer's outlier ratio D_i linearly onto
[0, 2*lambda] and gives layer i the sparsity target - (that value - its mean over layers).
Spruce additionally keeps every layer within [target - lambda, target + lambda] and the mean
exactly at the target (see ``owl_ratios``).
"""

from __future__ import annotations

import math

import torch

from spruce.core.errors import SpecError, SystemFault

# Per-layer ratios stay at least this far from 0 and 1 (or halfway to the target when the
# target is closer), so every layer keeps some weights and loses some.
_EDGE = 0.01


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Fraction of the scores above ``m`` x their mean, all linears of one decoder layer pooled.

    Computed from sums and counts, so the pooled scores are never concatenated in memory.
    """
    if not scores:
        raise SystemFault("outlier_ratio needs the scores of at least one linear")
    total = sum(float(S.sum(dtype=torch.float64)) for S in scores)
    count = sum(S.numel() for S in scores)
    threshold = m * total / count
    above = sum(int((threshold < S).sum()) for S in scores)
    return above / count


def owl_ratios(outlier_ratios: list[float], target: float, lam: float) -> list[float]:
    """Per-layer sparsity ratios: more outliers, less sparsity; bounded by target +- lam; mean = target.

    Every ratio lies in [max(target - lam, e0), min(target + lam, 1 - e1)], where e0 and e1 are
    ``_EDGE`` or half the distance from the target to 0 (to 1) if that is smaller, so every
    ratio is in (0, 1). All layers get ``target`` when the outlier ratios are all equal.
    """
    if not 0.0 < target < 1.0:
        raise SpecError(f"OWL target sparsity {target} is not in (0, 1)", param="sparsity")
    if not lam >= 0.0:
        raise SpecError(f"OWL lambda {lam} is negative", param="method.owl_lambda")
    if not outlier_ratios:
        raise SystemFault("owl_ratios needs the outlier ratio of at least one layer")
    D = [float(d) for d in outlier_ratios]
    if not all(math.isfinite(d) for d in D):
        raise SystemFault(f"owl_ratios got non-finite outlier ratios: {D}")
    lo = max(target - lam, min(_EDGE, target / 2))
    hi = min(target + lam, 1.0 - min(_EDGE, (1.0 - target) / 2))
    spread = max(D) - min(D)
    if spread == 0.0 or lo == hi:
        return [target] * len(D)
    # OWL's formula: sparsity_i = target - (x_i - mean(x)), x_i = (D_i - min D) / spread * 2 lam.
    x = [(d - min(D)) / spread * 2.0 * lam for d in D]
    mean_x = sum(x) / len(x)
    s = [target - (xi - mean_x) for xi in x]
    # OWL's values may leave [lo, hi] (its range is 2*lam wide but not centred on the target).
    # Clip, then re-balance with one common shift c: mean(clip(s + c, lo, hi)) is continuous and
    # non-decreasing in c, from lo to hi, so bisection finds the c that gives exactly the target
    # (lo <= target <= hi). The shift keeps the order of the layers and is 0 when nothing clips.
    c = _balancing_shift(s, target, lo, hi)
    ratios = [min(max(si + c, lo), hi) for si in s]
    # Bisection leaves a residual of a few ulps; put it on the layers strictly inside the bounds.
    free = [i for i, r in enumerate(ratios) if lo < r < hi]
    residual = target * len(ratios) - sum(ratios)
    for i in free:
        ratios[i] = min(max(ratios[i] + residual / len(free), lo), hi)
    return ratios


def _balancing_shift(s: list[float], target: float, lo: float, hi: float) -> float:
    """The c with mean(clip(s_i + c, lo, hi)) == target, by bisection in float64."""

    def mean_at(c: float) -> float:
        return sum(min(max(si + c, lo), hi) for si in s) / len(s)

    if mean_at(0.0) == target:
        return 0.0
    a, b = lo - max(s), hi - min(s)  # mean_at(a) = lo, mean_at(b) = hi
    for _ in range(200):
        mid = (a + b) / 2
        if mid in (a, b):
            break
        if mean_at(mid) < target:
            a = mid
        else:
            b = mid
    return (a + b) / 2
