"""``core.swaps``: Wanda's mask refinement keeps every count and pattern and only lowers the error."""

from __future__ import annotations

import itertools

import pytest
import torch

from spruce.core.errors import SystemFault
from spruce.core.pruners import prune_weight, wanda_scores
from spruce.core.sparsity import LayerTarget, mask_for, nm_ok
from spruce.core.spec import FIT_SHARES
from spruce.core.stats import InputStats
from spruce.core.swaps import swap_refine

WANDA_FIT_SHARE = FIT_SHARES["wanda"]

pytestmark = pytest.mark.unit


def correlated_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    """Tokens whose channels are strongly correlated (a shared factor), unlike a diagonal H."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * 0.4 + torch.eye(d)
    return (torch.randn(n, d, generator=g) + 2.0) @ mix  # a non-zero mean correlates every channel


def error(W: torch.Tensor, keep: torch.Tensor, H: torch.Tensor) -> float:
    R = W * ~keep
    return float(((R @ H) * R).sum(dtype=torch.float64))


def wanda_keep(W: torch.Tensor, X: torch.Tensor, target: LayerTarget) -> torch.Tensor:
    return mask_for(wanda_scores(W, X.square().sum(0).sqrt()), target)


@pytest.mark.parametrize(
    "target", [LayerTarget(0.5), LayerTarget(0.7), LayerTarget(0.5, 2, 4), LayerTarget(0.5, 4, 8)]
)
def test_swaps_lower_the_error_and_keep_every_count_and_pattern(target: LayerTarget) -> None:
    X = correlated_inputs(400, 32, seed=1)
    W = torch.randn(12, 32, generator=torch.Generator().manual_seed(2))
    H = X.T @ X
    keep0 = wanda_keep(W, X, target)
    result = swap_refine(W, keep0, H, target, rounds=200)
    assert result.swaps > 0
    assert torch.equal(result.keep.sum(dim=1), keep0.sum(dim=1))  # each row keeps its count
    if target.is_nm:
        assert nm_ok(W * result.keep, target.n, target.m)
    e0, e1 = error(W, keep0, H), error(W, result.keep, H)
    assert e1 < 0.9 * e0
    assert result.before == pytest.approx(e0, rel=1e-5)
    assert result.after == pytest.approx(e1, rel=1e-4, abs=1e-4 * e0)
    assert result.gain == pytest.approx(1 - e1 / e0, abs=1e-4)


def every_mask(target: LayerTarget, d: int) -> list[torch.Tensor]:
    """Every [1, d] keep mask of one row that meets ``target`` (d = 12)."""
    if target.is_nm:
        per_group = list(itertools.combinations(range(4), 2))  # which 2 of a group of 4 survive
        combos = itertools.product(per_group, repeat=d // 4)
        return [torch.tensor([[j % 4 in c[j // 4] for j in range(d)]]) for c in combos]
    return [torch.tensor([[j not in c for j in range(d)]]) for c in itertools.combinations(range(d), d // 2)]


@pytest.mark.parametrize(("target", "rows"), [(LayerTarget(0.5), 6), (LayerTarget(0.5, 2, 4), 4)])
def test_swaps_close_most_of_the_gap_to_the_exhaustive_optimum(target: LayerTarget, rows: int) -> None:
    masks = every_mask(target, 12)
    closed = []
    for seed in range(6):
        X = correlated_inputs(300, 12, seed=seed)
        W = torch.randn(rows, 12, generator=torch.Generator().manual_seed(seed + 10 * rows))
        H = X.T @ X
        keep0 = wanda_keep(W, X, target)
        keep1 = swap_refine(W, keep0, H, target, rounds=1000).keep
        if target.is_nm:
            assert nm_ok(W * keep1, 2, 4)
        e0, e1 = error(W, keep0, H), error(W, keep1, H)
        best = sum(min(error(W[i : i + 1], mask, H) for mask in masks) for i in range(rows))
        assert best * (1 - 1e-6) <= e1 <= e0
        closed.append((e0 - e1) / (e0 - best))
    assert min(closed) > 0.6 and sum(closed) / len(closed) > 0.8, closed


def test_uncorrelated_inputs_leave_nothing_to_swap() -> None:
    # With a diagonal H each weight's error stands alone, and Wanda's ranking is already optimal.
    g = torch.Generator().manual_seed(5)
    scale = torch.rand(24, generator=g) + 0.1
    H = torch.diag(scale.square())
    W = torch.randn(8, 24, generator=g)
    target = LayerTarget(0.5)
    keep0 = mask_for(wanda_scores(W, scale), target)
    result = swap_refine(W, keep0, H, target, rounds=50)
    assert result.swaps == 0 and result.rounds == 0
    assert torch.equal(result.keep, keep0)


@pytest.mark.parametrize("target", [LayerTarget(0.5), LayerTarget(0.5, 2, 4)])
def test_shrink_damps_the_correlations_the_swaps_exploit(target: LayerTarget) -> None:
    X = correlated_inputs(400, 32, seed=3)
    W = torch.randn(12, 32, generator=torch.Generator().manual_seed(4))
    H = X.T @ X
    keep0 = wanda_keep(W, X, target)
    full = swap_refine(W, keep0, H, target, rounds=200)
    assert torch.equal(swap_refine(W, keep0, H, target, rounds=200, shrink=0.0).keep, full.keep)
    # Shrunk all the way H is its diagonal, where Wanda's mask is already the optimum.
    none = swap_refine(W, keep0, H, target, rounds=200, shrink=1.0)
    assert none.swaps == 0 and torch.equal(none.keep, keep0)
    # Half way: the search optimises (H + diag(H)) / 2, which it lowers, and swaps less than
    # with the full correlations.
    half = swap_refine(W, keep0, H, target, rounds=200, shrink=0.5)
    H_half = (H + torch.diag(H.diagonal())) / 2
    assert 0 < half.swaps < full.swaps
    assert error(W, half.keep, H_half) < error(W, keep0, H_half)
    assert half.before == pytest.approx(error(W, keep0, H_half), rel=1e-5)
    assert H.equal(X.T @ X)  # the caller's H is untouched


def test_shrink_reaches_the_swaps_through_prune_weight() -> None:
    X = correlated_inputs(256, 16, seed=10)
    W = torch.randn(6, 16, generator=torch.Generator().manual_seed(11))
    stats = InputStats.new(16, device="cpu", want_hessian=True)
    stats.update(X)
    target = LayerTarget(0.5)
    assert prune_weight(W, "wanda", target, stats, swap_rounds=20).swaps.swaps > 0  # type: ignore[union-attr]
    shrunk = prune_weight(W, "wanda", target, stats, swap_rounds=20, swap_shrink=1.0)
    assert shrunk.swaps is not None and shrunk.swaps.swaps == 0


def test_zero_rounds_and_rows_without_zeros_change_nothing() -> None:
    X = correlated_inputs(200, 16, seed=6)
    W = torch.randn(5, 16, generator=torch.Generator().manual_seed(7))
    H = X.T @ X
    target = LayerTarget(0.5)
    keep0 = wanda_keep(W, X, target)
    assert torch.equal(swap_refine(W, keep0, H, target, rounds=0).keep, keep0)
    full = torch.ones_like(keep0)
    result = swap_refine(W, full, H, LayerTarget(0.0), rounds=10)
    assert result.swaps == 0 and bool(result.keep.all())


def test_prune_weight_refines_wanda_only_with_the_full_second_moment() -> None:
    X = correlated_inputs(256, 16, seed=8)
    W = torch.randn(6, 16, generator=torch.Generator().manual_seed(9))
    target = LayerTarget(0.5)
    with_h = InputStats.new(16, device="cpu", want_hessian=True)
    with_h.update(X)
    plain = prune_weight(W, "wanda", target, with_h)
    refined = prune_weight(W, "wanda", target, with_h, swap_rounds=20)
    assert plain.swaps is None and refined.swaps is not None and refined.swaps.swaps > 0
    H = X.T @ X
    assert error(W, refined.keep, H) < error(W, plain.keep, H)
    assert torch.equal(refined.W, W * refined.keep)  # surviving weights keep their values
    norms_only = InputStats.new(16, device="cpu", want_hessian=False)
    norms_only.update(X)
    with pytest.raises(SystemFault, match="X\\^T X"):
        prune_weight(W, "wanda", target, norms_only, swap_rounds=5)


@pytest.mark.parametrize("target", [LayerTarget(0.5), LayerTarget(0.5, 2, 4), LayerTarget(0.5, 4, 8)])
def test_dropping_stuck_rows_from_the_search_changes_nothing(
    target: LayerTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows that can no longer gain leave the working set (``_COMPACT``); the result must be the
    one of searching every row every round."""
    import spruce.core.swaps as swaps_module

    X = correlated_inputs(300, 32, seed=5)
    W = torch.randn(64, 32, generator=torch.Generator().manual_seed(6))
    H, keep0 = X.T @ X, wanda_keep(W, X, target)
    compacted = swap_refine(W, keep0, H, target, rounds=40)
    monkeypatch.setattr(swaps_module, "_COMPACT", 0.0)  # never compact
    full = swap_refine(W, keep0, H, target, rounds=40)
    assert compacted.swaps == full.swaps > 0
    assert compacted.rounds == full.rounds
    assert torch.equal(compacted.keep, full.keep)
    assert compacted.after == pytest.approx(full.after, rel=1e-6)


def fitted_error(W: torch.Tensor, keep: torch.Tensor, X: torch.Tensor, X_dense: torch.Tensor) -> float:
    """||T - X (W * keep)^T||^2 against Wanda's fitted target T = X W^T + share (X_d - X) W^T: the
    dense layer's output moved WANDA_FIT_SHARE of the way to the dense model's."""
    target = X @ W.T + WANDA_FIT_SHARE * (X_dense - X) @ W.T
    return float((target - X @ (W * keep).T).square().sum(dtype=torch.float64))


def fit_stats(W: torch.Tensor, X: torch.Tensor, X_dense: torch.Tensor) -> InputStats:
    stats = InputStats.new(X.shape[1], device="cpu", want_hessian=True, cross_out=W.shape[0])
    stats.update(X, (X_dense - X) @ W.T)  # y_dense - y, one row per token
    return stats


@pytest.mark.parametrize("target", [LayerTarget(0.5), LayerTarget(0.5, 2, 4)])
def test_wanda_with_cross_statistics_fits_the_dense_models_output(target: LayerTarget) -> None:
    """Wanda's fit to the dense model (the swaps' linear term, from Wanda's own mask): the swaps
    report the exact objective (less the constant share^2 ||(X_d - X) w||^2 a mask cannot change)
    and end below Wanda fitted to the dense layer, measured against the fitted target."""
    X = correlated_inputs(400, 32, seed=11)
    X_dense = X + 0.4 * correlated_inputs(400, 32, seed=12)  # what the earlier, dense layers gave
    W = torch.randn(10, 32, generator=torch.Generator().manual_seed(13))
    const = WANDA_FIT_SHARE**2 * float(((X_dense - X) @ W.T).square().sum(dtype=torch.float64))
    layer_stats = InputStats.new(32, device="cpu", want_hessian=True)
    layer_stats.update(X)
    fit = prune_weight(
        W, "wanda", target, fit_stats(W, X, X_dense), swap_rounds=50, fit_share=WANDA_FIT_SHARE
    )
    plain = prune_weight(W, "wanda", target, layer_stats, swap_rounds=50)
    assert fit.swaps is not None and fit.swaps.swaps > 0
    assert torch.equal(fit.keep.sum(dim=1), plain.keep.sum(dim=1))
    if target.is_nm:
        assert nm_ok(fit.W, target.n, target.m)
    assert torch.equal(fit.W, W * fit.keep)  # still mask-only
    total = fitted_error(W, fit.keep, X, X_dense)
    # (the statistics' scale: H = 2/n X^T X, n = 400 tokens)
    assert fit.swaps.after * 400 / 2 + const == pytest.approx(total, rel=1e-4)
    assert total < 0.97 * fitted_error(W, plain.keep, X, X_dense)


def test_wanda_fit_without_drift_is_wanda() -> None:
    """Equal inputs (the first layer, or a dense model): the cross statistics are zero and the
    swaps take the same steps as Wanda's fitted to the layer."""
    X = correlated_inputs(300, 16, seed=14)
    W = torch.randn(6, 16, generator=torch.Generator().manual_seed(15))
    layer_stats = InputStats.new(16, device="cpu", want_hessian=True)
    layer_stats.update(X)
    for target in (LayerTarget(0.5), LayerTarget(0.5, 2, 4)):
        fit = prune_weight(W, "wanda", target, fit_stats(W, X, X), swap_rounds=20, fit_share=WANDA_FIT_SHARE)
        plain = prune_weight(W, "wanda", target, layer_stats, swap_rounds=20)
        assert torch.equal(fit.keep, plain.keep)
