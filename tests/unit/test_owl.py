"""OWL: outlier ratios and per-layer sparsity ratios (mean exactly the target, bounded)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from spruce.core.errors import SpecError, SystemFault
from spruce.core.owl import outlier_ratio, owl_ratios

pytestmark = pytest.mark.unit


def test_outlier_ratio_pools_the_scores_of_a_layer() -> None:
    a = torch.ones(4, 10)  # 40 scores of 1
    b = torch.ones(2, 5)  # 10 scores of 1 ...
    b[0, 0] = 51.0  # ... one of them 51: the pooled mean is 100 / 50 = 2
    assert outlier_ratio([a, b], m=5.0) == pytest.approx(1 / 50)  # only 51 > 10
    assert outlier_ratio([a, b], m=30.0) == 0.0
    assert outlier_ratio([a, b], m=0.4) == 1.0  # every score > 0.8
    # pooling is not averaging per linear: b alone has mean 6, so 51 is still an outlier at m=5
    assert outlier_ratio([b], m=5.0) == pytest.approx(1 / 10)


def assert_valid(ratios: list[float], target: float, lam: float) -> None:
    assert abs(sum(ratios) / len(ratios) - target) <= 1e-9
    assert all(0.0 < r < 1.0 for r in ratios)
    assert all(target - lam - 1e-12 <= r <= target + lam + 1e-12 for r in ratios)


def test_more_outliers_means_less_sparsity() -> None:
    D = [0.01, 0.05, 0.02, 0.08, 0.03]
    ratios = owl_ratios(D, 0.7, 0.08)
    assert_valid(ratios, 0.7, 0.08)
    order_d = sorted(range(len(D)), key=lambda i: D[i])
    order_r = sorted(range(len(D)), key=lambda i: -ratios[i])
    assert order_d == order_r
    assert max(ratios) - min(ratios) > 0.1  # the allowed spread is used


def test_unclipped_case_is_owls_formula() -> None:
    # symmetric outlier ratios: OWL's own values already lie in target +- lam
    assert owl_ratios([0.0, 0.5, 1.0], 0.5, 0.1) == pytest.approx([0.6, 0.5, 0.4], abs=1e-12)


def test_equal_outlier_ratios_give_the_target_everywhere() -> None:
    assert owl_ratios([0.03] * 7, 0.7, 0.08) == [0.7] * 7
    assert owl_ratios([0.2], 0.5, 0.3) == [0.5]
    assert owl_ratios([0.1, 0.9], 0.6, 0.0) == [0.6, 0.6]


@pytest.mark.parametrize(
    ("D", "target", "lam"),
    [
        ([1.0] + [0.0] * 29, 0.7, 0.08),  # one outlier layer: OWL's raw value leaves the bounds
        ([0.0] + [1.0] * 29, 0.7, 0.08),
        ([0.0, 1e-12, 1.0], 0.5, 0.5),
        ([0.3, 0.1, 0.2, 0.9], 0.95, 0.2),  # target + lam beyond 1
        ([0.3, 0.1, 0.2, 0.9], 0.02, 0.2),  # target - lam below 0
        ([5.0, 1e-9, 3.0, 1e6], 0.999, 1.0),
        ([1e-300, 2e-300, 0.0], 1e-6, 1.0),
        (list(range(100)), 0.5, 1.0),
    ],
)
def test_extreme_inputs_keep_the_mean_and_the_bounds(D: list[float], target: float, lam: float) -> None:
    ratios = owl_ratios(D, target, lam)
    assert len(ratios) == len(D)
    assert_valid(ratios, target, lam)


def test_random_inputs_keep_the_mean_and_the_bounds() -> None:
    rng = random.Random(0)
    for _ in range(200):
        D = [rng.random() ** 3 for _ in range(rng.randint(2, 40))]
        target, lam = rng.uniform(0.05, 0.95), rng.uniform(0.0, 0.5)
        ratios = owl_ratios(D, target, lam)
        assert_valid(ratios, target, lam)
        # the order of the layers is kept (ties allowed where clipping flattens them)
        pairs = sorted(zip(D, ratios, strict=True))
        assert all(r1 >= r2 - 1e-12 for (_, r1), (_, r2) in itertools.pairwise(pairs))


def test_bad_arguments() -> None:
    with pytest.raises(SpecError):
        owl_ratios([0.1, 0.2], 1.0, 0.1)
    with pytest.raises(SpecError):
        owl_ratios([0.1, 0.2], 0.5, -0.1)
    with pytest.raises(SystemFault):
        owl_ratios([], 0.5, 0.1)
    with pytest.raises(SystemFault):
        owl_ratios([0.1, float("nan")], 0.5, 0.1)
    with pytest.raises(SystemFault):
        outlier_ratio([], 5.0)
