"""``core.stats``: the symmetric Gram product and the cross statistics read against reference outputs."""

from __future__ import annotations

import pytest
import torch

from spruce.core.errors import SystemFault
from spruce.core.stats import InputStats, gram

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("d", "block"), [(7, 256), (64, 16), (70, 16), (40, 40), (41, 40)])
def test_gram_equals_the_full_product(d: int, block: int) -> None:
    X = torch.randn(300, d, generator=torch.Generator().manual_seed(d))
    G = gram(X, block)
    torch.testing.assert_close(G, X.T @ X, rtol=1e-5, atol=1e-4)
    if d > block:  # the blocks below the diagonal are mirrored, not multiplied again
        assert torch.equal(G[block:, :block], G[:block, block:].T)


@pytest.mark.parametrize("bias", [True, False])
def test_update_against_equals_update_with_the_output_difference(bias: bool) -> None:
    g = torch.Generator().manual_seed(3)
    lin = torch.nn.Linear(24, 10, bias=bias)
    x = torch.randn(2, 50, 24, generator=g)  # [b, seq, in]
    y_ref = lin(x + 0.3 * torch.randn(x.shape, generator=g)).detach()  # the linear on other inputs
    want = InputStats.new(24, device="cpu", want_hessian=True, cross_out=10)
    want.update(x, y_ref - lin(x).detach())
    got = InputStats.new(24, device="cpu", want_hessian=True, cross_out=10)
    got.update_against(x, y_ref, lin.weight, lin.bias)
    assert got.n == want.n == 100
    torch.testing.assert_close(got.H, want.H, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got.sq_sum, want.sq_sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.G, want.G, rtol=1e-4, atol=1e-3)
    assert float(got.G.abs().max()) > 1.0  # the inputs differ, so the cross term does


def test_update_against_needs_cross_statistics_and_matching_shapes() -> None:
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(5, 8)
    with pytest.raises(SystemFault, match="cross"):
        InputStats.new(8, device="cpu", want_hessian=True).update_against(x, lin(x), lin.weight, lin.bias)
    stats = InputStats.new(8, device="cpu", want_hessian=True, cross_out=4)
    with pytest.raises(SystemFault, match="reference output"):
        stats.update_against(x, lin(x)[:3], lin.weight, lin.bias)
    assert stats.n == 0


def test_hessian_every_reads_every_nth_token_and_keeps_the_norms_whole() -> None:
    X = torch.randn(2, 50, 12, generator=torch.Generator().manual_seed(5))
    st = InputStats.new(12, device="cpu", want_hessian=True, hessian_every=3)
    st.update(X[0])
    st.update(X[1])
    rows = X.reshape(-1, 12)
    picked = torch.cat([X[0][::3], X[1][::3]])  # every 3rd token of each batch
    assert st.n == 100 and st.h_rows == picked.shape[0] == 34
    torch.testing.assert_close(st.sq_sum, rows.square().sum(0))  # Wanda's norms: every token
    torch.testing.assert_close(st.hessian(), picked.T @ picked * (2.0 / 34), rtol=1e-5, atol=1e-5)
    with pytest.raises(SystemFault, match="hessian_every"):
        InputStats.new(12, device="cpu", want_hessian=True, cross_out=4, hessian_every=2)
    with pytest.raises(SystemFault, match="hessian_every"):
        InputStats.new(12, device="cpu", want_hessian=True, hessian_every=0)
