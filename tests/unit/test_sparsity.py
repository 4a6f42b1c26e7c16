"""Masks, N:M checks, layer targets and the input statistics the pruners read."""

from __future__ import annotations

import pytest
import torch

from spruce.core.errors import SpecError, SystemFault
from spruce.core.sparsity import LayerTarget, mask_for, nm_mask, nm_ok, sparsity_of, unstructured_mask
from spruce.core.spec import Sparsity
from spruce.core.stats import InputStats

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("ratio", [0.5, 0.7, 0.25])
def test_unstructured_mask_is_exact_per_row_and_drops_the_lowest(ratio: float) -> None:
    scores = torch.rand(16, 80, generator=torch.Generator().manual_seed(0))
    keep = unstructured_mask(scores, ratio)
    assert keep.dtype == torch.bool
    assert (keep.logical_not().sum(dim=1) == round(ratio * 80)).all()
    # every dropped score is below every kept score of its row
    dropped_max = scores.masked_fill(keep, -1.0).max(dim=1).values
    kept_min = scores.masked_fill(~keep, 2.0).min(dim=1).values
    assert (dropped_max < kept_min).all()


def test_unstructured_mask_ratio_zero_keeps_everything() -> None:
    assert unstructured_mask(torch.rand(3, 8), 0.0).all()


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4), (3, 8)])
def test_nm_mask_keeps_the_n_highest_of_each_group(n: int, m: int) -> None:
    scores = torch.rand(8, 64, generator=torch.Generator().manual_seed(1))
    keep = nm_mask(scores, n, m)
    groups = keep.reshape(8, 64 // m, m)
    assert (groups.sum(dim=-1) == n).all()
    s = scores.reshape(8, 64 // m, m)
    assert (s.masked_fill(~groups, -1.0).max(-1).values >= 0).all()
    assert (s.masked_fill(groups, -1.0).max(-1).values < s.masked_fill(~groups, 2.0).min(-1).values).all()
    assert nm_ok(keep, n, m)
    assert nm_ok(scores * keep, n, m)


def test_nm_mask_rejects_a_width_that_is_not_a_multiple_of_m() -> None:
    with pytest.raises(SpecError):
        nm_mask(torch.rand(2, 10), 2, 4)


def test_nm_ok_detects_a_violating_group() -> None:
    W = torch.zeros(2, 8)
    W[0, :2] = 1.0
    assert nm_ok(W, 2, 4)
    W[1, 4:7] = 1.0  # three non-zeros in one group of four
    assert not nm_ok(W, 2, 4)
    assert nm_ok(W, 3, 4)
    assert not nm_ok(torch.zeros(2, 6), 2, 4)


def test_sparsity_of_counts_exact_zeros() -> None:
    W = torch.tensor([[0.0, 1e-30, -0.0, 2.0]])
    assert sparsity_of(W) == 0.5


def test_mask_for_dispatches_on_the_target() -> None:
    scores = torch.rand(4, 16, generator=torch.Generator().manual_seed(2))
    assert torch.equal(mask_for(scores, LayerTarget(0.75)), unstructured_mask(scores, 0.75))
    assert torch.equal(mask_for(scores, LayerTarget(0.5, 2, 4)), nm_mask(scores, 2, 4))


def test_layer_target_from_sparsity() -> None:
    assert LayerTarget.from_sparsity(Sparsity.parse(0.5)) == LayerTarget(0.5)
    assert LayerTarget.from_sparsity(Sparsity.parse(0.5), ratio=0.62) == LayerTarget(0.62)
    nm = LayerTarget.from_sparsity(Sparsity.parse("2:4"))
    assert (nm.ratio, nm.n, nm.m, nm.is_nm) == (0.5, 2, 4, True)
    with pytest.raises(SpecError):
        LayerTarget.from_sparsity(Sparsity.parse("2:4"), ratio=0.6)
    with pytest.raises(SpecError):
        LayerTarget(1.0)
    with pytest.raises(SpecError):
        LayerTarget(0.5, n=4, m=2)


def test_input_stats_over_batches_equal_the_stats_of_the_concatenation() -> None:
    g = torch.Generator().manual_seed(3)
    batches = [
        torch.randn(2, 5, 12, generator=g),
        torch.randn(3, 7, 12, generator=g),
        torch.randn(1, 12, generator=g),
    ]
    many = InputStats.new(12, device="cpu", want_hessian=True)
    for x in batches:
        many.update(x.to(torch.bfloat16) if x.shape[0] == 3 else x)
    X = torch.cat([(x.to(torch.bfloat16).float() if x.shape[0] == 3 else x).reshape(-1, 12) for x in batches])
    one = InputStats.new(12, device="cpu", want_hessian=True)
    one.update(X)
    assert many.n == one.n == X.shape[0] == 32
    torch.testing.assert_close(many.sq_sum, one.sq_sum)
    torch.testing.assert_close(many.H, one.H)
    torch.testing.assert_close(many.col_norm, X.norm(dim=0))
    torch.testing.assert_close(many.hessian(), 2.0 / 32 * X.T @ X)
    assert many.sq_sum.dtype == torch.float32 and many.H is not None and many.H.dtype == torch.float32


def test_input_stats_without_hessian() -> None:
    stats = InputStats.new(4, device="cpu", want_hessian=False)
    stats.update(torch.ones(3, 4))
    assert stats.H is None
    torch.testing.assert_close(stats.col_norm, torch.full((4,), 3.0).sqrt())
    with pytest.raises(SystemFault):
        stats.hessian()
    with pytest.raises(SystemFault):
        stats.update(torch.ones(3, 5))
    with pytest.raises(SystemFault):
        InputStats.new(4, device="cpu", want_hessian=True).hessian()
