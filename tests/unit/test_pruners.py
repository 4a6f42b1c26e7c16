"""Magnitude, Wanda and SparseGPT on small random layers: exact masks, N:M, error, retries."""

from __future__ import annotations

import pytest
import torch

from spruce.core.errors import FactorizationError, SpecError, SystemFault
from spruce.core.pruners import (
    PRUNE_STEPS,
    inverse_hessian_factor,
    magnitude_scores,
    prune_weight,
    reconstruction_error,
    sparsegpt,
    wanda_scores,
)
from spruce.core.sparsity import LayerTarget, nm_ok, sparsity_of, unstructured_mask
from spruce.core.spec import PRUNER_TRAITS, PRUNERS, traits
from spruce.core.stats import InputStats

pytestmark = pytest.mark.unit

OUT, IN = 24, 80  # 0.5 * 80 and 0.7 * 80 are integers; 80 is a multiple of 4 and 8
BLOCK = 32  # several SparseGPT blocks, the last one partial


def layer(out: int = OUT, inp: int = IN, tokens: int = 512, seed: int = 0) -> tuple[torch.Tensor, InputStats]:
    """A random weight and the stats of correlated inputs with a few large-norm outlier channels."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(inp, inp, generator=g) / torch.arange(1, inp + 1).sqrt().unsqueeze(
        1
    )  # decaying spectrum
    X = torch.randn(tokens, inp, generator=g) @ mix + 0.1 * torch.randn(
        tokens, inp, generator=g
    )  # [tokens, in]
    X[:, torch.randperm(inp, generator=g)[:3]] *= 20.0
    W = torch.randn(out, inp, generator=g) * torch.exp(0.5 * torch.randn(out, 1, generator=g))  # rows vary
    stats = InputStats.new(inp, device="cpu", want_hessian=True)
    stats.update(X)
    return W, stats


def run(W: torch.Tensor, pruner: str, target: LayerTarget, stats: InputStats, **kw):
    st = stats if traits(pruner).reads_data else None
    return prune_weight(W, pruner, target, st, blocksize=BLOCK, **kw)


@pytest.mark.parametrize("ratio", [0.5, 0.7])
@pytest.mark.parametrize("pruner", PRUNERS)
def test_unstructured_ratio_is_exact_per_layer(pruner: str, ratio: float) -> None:
    W, stats = layer()
    res = run(W, pruner, LayerTarget(ratio), stats)
    assert sparsity_of(res.W) == ratio
    assert int((res.W == 0).sum()) == round(ratio * W.numel())
    assert torch.equal(res.keep, res.W != 0)
    assert res.W.shape == W.shape and res.W.dtype == W.dtype


@pytest.mark.parametrize("ratio", [0.5, 0.7])
@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt-row"])
def test_unstructured_ratio_is_exact_per_row(pruner: str, ratio: float) -> None:
    W, stats = layer()
    if pruner == "sparsegpt-row":
        res = sparsegpt(W, stats.hessian(), LayerTarget(ratio), blocksize=BLOCK, selection="row")
    else:
        res = run(W, pruner, LayerTarget(ratio), stats)
    assert ((res.W == 0).sum(dim=1) == round(ratio * IN)).all()
    assert torch.equal(res.keep, res.W != 0)


@pytest.mark.parametrize("selection", ["layer", "row", "block"])
@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_every_sparsegpt_selection_is_exact_per_layer(selection: str, ratio: float) -> None:
    W, stats = layer()
    res = sparsegpt(W, stats.hessian(), LayerTarget(ratio), blocksize=BLOCK, selection=selection)  # type: ignore[arg-type]
    assert int((res.W == 0).sum()) == round(ratio * W.numel())
    assert torch.equal(res.keep, res.W != 0)


def test_layer_selection_lets_rows_differ() -> None:
    """Rows of very different norms: the layer-wide counts prune the small rows harder."""
    W, stats = layer()
    W[: OUT // 2] *= 0.01
    res = sparsegpt(W, stats.hessian(), LayerTarget(0.5), blocksize=BLOCK)
    zeros = (res.W == 0).sum(dim=1)
    assert zeros[: OUT // 2].float().mean() > zeros[OUT // 2 :].float().mean()
    assert int(zeros.sum()) == OUT * IN // 2


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4), (3, 8)])
@pytest.mark.parametrize("pruner", PRUNERS)
def test_every_nm_group_obeys_the_pattern(pruner: str, n: int, m: int) -> None:
    W, stats = layer()
    res = run(W, pruner, LayerTarget(1 - n / m, n, m), stats)
    assert nm_ok(res.W, n, m)
    assert nm_ok(res.keep, n, m)
    groups = (res.W != 0).reshape(OUT, IN // m, m).sum(dim=-1)
    assert (groups == n).all()  # random weights: exactly n survivors per group


def test_sparsegpt_nm_with_a_block_that_is_not_a_multiple_of_m() -> None:
    W, stats = layer()
    res = sparsegpt(W, stats.hessian(), LayerTarget(5 / 8, 3, 8), blocksize=12)
    assert nm_ok(res.W, 3, 8)


@pytest.mark.parametrize("pruner", PRUNERS)
def test_nm_rejects_an_input_size_that_is_not_a_multiple_of_m(pruner: str) -> None:
    W, stats = layer(inp=18)
    with pytest.raises(SpecError):
        run(W, pruner, LayerTarget(0.5, 2, 4), stats)


def test_magnitude_breaks_exact_ties_towards_the_column_with_smaller_weights() -> None:
    W = torch.tensor(
        [
            [0.5, -0.5, 0.5, 0.1],  # three equal magnitudes compete for two places
            [4.0, 0.0, 0.0, 0.0],  # column 0 carries the largest weights
            [0.0, 2.0, 0.0, 0.0],  # column 1 the next
        ]
    )
    keep = prune_weight(W, "magnitude", LayerTarget(0.5, 2, 4), None).keep
    assert keep[0].tolist() == [False, True, True, False]  # columns 2 and 1: the smaller norms
    # Distinct magnitudes keep their order, also on a grid of few levels next to each other.
    levels = torch.arange(1, 17, dtype=torch.float32) * 0.0123
    G = levels[torch.randint(0, 16, (64, 96), generator=torch.Generator().manual_seed(0))]
    G = G * torch.where(torch.rand(64, 96, generator=torch.Generator().manual_seed(1)) < 0.5, -1.0, 1.0)
    S, A = magnitude_scores(G), G.abs().double()
    assert bool((S[:, :, None] > S[:, None, :])[A[:, :, None] > A[:, None, :]].all())


def test_wanda_with_equal_activation_norms_is_row_wise_magnitude() -> None:
    W, _ = layer()
    stats = InputStats.new(IN, device="cpu", want_hessian=False)
    stats.update(torch.full((5, IN), 0.3))
    for target in (LayerTarget(0.5), LayerTarget(0.5, 2, 4)):
        wanda = prune_weight(W, "wanda", target, stats)
        magnitude = prune_weight(W, "magnitude", target, None)
        assert torch.equal(wanda.keep, magnitude.keep)
        assert torch.equal(wanda.W, magnitude.W)
    assert torch.equal(magnitude_scores(W).argsort(dim=1), W.abs().argsort(dim=1))  # no ties here
    torch.testing.assert_close(wanda_scores(W, stats.col_norm), W.abs() * 0.3 * 5**0.5)


@pytest.mark.parametrize("target", [LayerTarget(0.5), LayerTarget(0.5, 2, 4), LayerTarget(0.7)])
def test_sparsegpt_reconstructs_better_than_wanda(target: LayerTarget) -> None:
    W, stats = layer(out=64, inp=96, tokens=1024, seed=1)
    H = stats.hessian()
    e_sparsegpt = reconstruction_error(W, run(W, "sparsegpt", target, stats).W, H)
    e_wanda = reconstruction_error(W, run(W, "wanda", target, stats).W, H)
    e_magnitude = reconstruction_error(W, run(W, "magnitude", target, stats).W, H)
    assert 0 < e_sparsegpt < 0.8 * e_wanda
    assert e_wanda < e_magnitude


def test_sparsegpt_update_is_the_optimal_compensation() -> None:
    """Pruning only the first input of every row (forced by col_weight) leaves every other weight
    free to move: SparseGPT's update must then be the least-squares optimum
    q = w_rest + H_rest^-1 H_rest,0 w_0 (zero dampening), in every block."""
    W, stats = layer(out=6, inp=48, tokens=512, seed=2)
    H = stats.hessian()
    col_weight = torch.full((48,), 1e3)
    col_weight[0] = 1e-3
    res = sparsegpt(W, H, LayerTarget(1 / 48), blocksize=16, dampening=0.0, col_weight=col_weight)
    assert not res.keep[:, 0].any() and res.keep[:, 1:].all()
    Hd, Wd = H.double(), W.double()
    expected = Wd[:, 1:] + torch.linalg.solve(Hd[1:, 1:], Hd[1:, :1] @ Wd[:, :1].T).T  # [out, in-1]
    torch.testing.assert_close(res.W[:, 1:].double(), expected, rtol=1e-3, atol=1e-3 * float(W.abs().max()))
    e_sgpt = reconstruction_error(W, res.W, H)
    assert e_sgpt < 0.5 * reconstruction_error(W, W * res.keep, H)  # compensation helps


@pytest.mark.parametrize("pruner", PRUNERS)
@pytest.mark.parametrize("target", [LayerTarget(0.5), LayerTarget(0.5, 2, 4)])
def test_col_weight_none_equals_ones(pruner: str, target: LayerTarget) -> None:
    W, stats = layer()
    plain = run(W, pruner, target, stats)
    ones = run(W, pruner, target, stats, col_weight=torch.ones(IN))
    assert torch.equal(plain.keep, ones.keep)
    assert torch.equal(plain.W, ones.W)


@pytest.mark.parametrize("pruner", PRUNERS)
@pytest.mark.parametrize("target", [LayerTarget(0.7), LayerTarget(0.5, 2, 4)])
def test_col_weight_boosting_a_channel_keeps_more_of_it(pruner: str, target: LayerTarget) -> None:
    W, stats = layer()
    # the input channel with the fewest survivors in the plain run
    plain = run(W, pruner, target, stats)
    j = int(plain.keep.sum(dim=0).argmin())
    col_weight = torch.ones(IN)
    col_weight[j] = 100.0
    boosted = run(W, pruner, target, stats, col_weight=col_weight)
    assert boosted.keep[:, j].sum() > plain.keep[:, j].sum()
    assert boosted.keep[:, j].sum() >= 0.9 * OUT
    assert sparsity_of(boosted.W) == sparsity_of(plain.W)  # the budget is unchanged


def test_sparsegpt_handles_dead_inputs() -> None:
    W, stats = layer()
    H = stats.hessian()
    H[5, :] = 0.0
    H[:, 5] = 0.0
    res = sparsegpt(W, H, LayerTarget(0.5), blocksize=BLOCK)
    assert torch.isfinite(res.W).all()
    assert (res.W[:, 5] == 0).all() and not res.keep[:, 5].any()
    assert sparsity_of(res.W) == 0.5


def test_sparsegpt_keeps_the_dtype_and_does_not_touch_its_inputs() -> None:
    W, stats = layer()
    H = stats.hessian()
    W16, H_before = W.to(torch.bfloat16), H.clone()
    res = sparsegpt(W16, H, LayerTarget(0.5), blocksize=BLOCK)
    assert res.W.dtype == torch.bfloat16
    assert torch.equal(H, H_before)
    assert sparsity_of(res.W) == 0.5
    assert res.damp == 0.01 and res.retries == 0


def indefinite_hessian(min_eig: float, dim: int = 16) -> torch.Tensor:
    """A symmetric H with mean diagonal 1 and smallest eigenvalue ``min_eig``."""
    Q, _ = torch.linalg.qr(
        torch.randn(dim, dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    )
    eig = torch.linspace(min_eig, 2.0 - min_eig, dim, dtype=torch.float64)  # mean 1
    return (Q * eig @ Q.T).float()


def test_factorisation_retry_is_recorded() -> None:
    # smallest eigenvalue -0.05: damp 0 fails, then 0.01 fails, then 0.1 works
    H = indefinite_hessian(-0.05)
    W = torch.randn(4, 16, generator=torch.Generator().manual_seed(5))
    res = sparsegpt(W, H, LayerTarget(0.5), dampening=0.0)
    assert res.retries == 2
    assert res.damp == pytest.approx(0.1)
    assert sparsity_of(res.W) == 0.5


@pytest.mark.parametrize("kind", ["negative_definite", "nan"])
def test_factorisation_failure_raises(kind: str) -> None:
    H = -torch.eye(16) if kind == "negative_definite" else torch.full((16, 16), float("nan"))
    W = torch.randn(4, 16)
    with pytest.raises(FactorizationError, match="could not factorise"):
        sparsegpt(W, H, LayerTarget(0.5), dampening=0.0, max_retries=3)
    with pytest.raises(FactorizationError):
        inverse_hessian_factor(H, dampening=0.0, max_retries=0)


def test_shared_factor_gives_the_same_result() -> None:
    W, stats = layer()
    H = stats.hessian()
    factor = inverse_hessian_factor(H)
    a = sparsegpt(W, H, LayerTarget(0.5), blocksize=BLOCK)
    b = sparsegpt(W, H, LayerTarget(0.5), blocksize=BLOCK, factor=factor)
    assert torch.equal(a.W, b.W)


def test_row_selection_prunes_rows_independently() -> None:
    """With per-row selection a row's result does not depend on the other rows, so linears that
    share an input (q/k/v, gate/up) may be pruned in one call on their stacked weights."""
    W, stats = layer()
    H = stats.hessian()
    both = sparsegpt(W, H, LayerTarget(0.5), blocksize=BLOCK, selection="row").W
    top = sparsegpt(W[:10], H, LayerTarget(0.5), blocksize=BLOCK, selection="row").W
    torch.testing.assert_close(both[:10], top, rtol=0, atol=1e-5)
    assert torch.equal(both[:10] == 0, top == 0)


def test_reconstruction_error() -> None:
    g = torch.Generator().manual_seed(6)
    X = torch.randn(8, 40, generator=g, dtype=torch.float64)  # [in, tokens]
    W = torch.randn(5, 8, generator=g, dtype=torch.float64)
    W_new = W * (torch.rand(5, 8, generator=g) > 0.5)
    H = X @ X.T
    expected = float(((W - W_new) @ X).square().sum() / (W @ X).square().sum())
    # the products run in float32: float32's precision, not float64's
    assert reconstruction_error(W, W_new, H) == pytest.approx(expected, rel=1e-6)
    assert reconstruction_error(W, W_new, 3.0 * H) == pytest.approx(expected, rel=1e-6)
    assert reconstruction_error(W, W, H) == 0.0


def test_prune_weight_rejects_bad_calls() -> None:
    W, stats = layer()
    with pytest.raises(SpecError):
        prune_weight(W, "random", LayerTarget(0.5), stats)
    with pytest.raises(SystemFault):
        prune_weight(W, "wanda", LayerTarget(0.5), None)
    with pytest.raises(SystemFault):
        prune_weight(W, "sparsegpt", LayerTarget(0.5), None)


def test_magnitude_prunes_the_smallest_weights_of_each_row() -> None:
    W, _ = layer()
    res = prune_weight(W, "magnitude", LayerTarget(0.5), None)
    assert torch.equal(res.keep, unstructured_mask(W.abs(), 0.5))
    assert torch.equal(res.W, W * res.keep)


def test_hinv_factor_is_the_upper_cholesky_factor_of_the_damped_inverse() -> None:
    """The factor equals the textbook cholesky -> cholesky_inverse -> cholesky(upper) route."""
    _, stats = layer()
    H = stats.hessian()
    factor = inverse_hessian_factor(H, dampening=0.01)
    Hd = H.double() + 0.01 * H.diagonal().double().mean() * torch.eye(IN, dtype=torch.float64)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(Hd)), upper=True)
    assert torch.equal(factor.Hinv, factor.Hinv.triu())
    torch.testing.assert_close(factor.Hinv.double(), U, rtol=1e-4, atol=1e-5 * float(U.abs().max()))
    Hinv = torch.linalg.inv(Hd)
    UtU = factor.Hinv.double().T @ factor.Hinv.double()
    torch.testing.assert_close(UtU, Hinv, rtol=1e-3, atol=1e-5 * float(Hinv.abs().max()))


def _paired_layer(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, InputStats]:
    """W, the pruned model's inputs X, the dense model's inputs X_d (X plus a drift correlated
    with X, as earlier pruned layers leave it) and the paired stats of the two."""
    W, _ = layer(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(512, IN, generator=g) @ torch.randn(IN, IN, generator=g) / IN**0.5  # [tokens, in]
    X_d = X + 0.3 * X @ torch.randn(IN, IN, generator=g) / IN**0.5 + 0.05 * torch.randn(512, IN, generator=g)
    paired = InputStats.new(IN, device="cpu", want_hessian=True, cross_out=OUT)
    paired.update(X, (X_d - X) @ W.T)  # y_dense - y of the linear
    return W, X, X_d, paired


def test_dense_target_with_equal_inputs_is_the_weight_itself() -> None:
    W, _ = layer()
    X = torch.randn(256, IN)
    paired = InputStats.new(IN, device="cpu", want_hessian=True, cross_out=OUT)
    paired.update(X, X @ W.T - X @ W.T)
    assert torch.equal(paired.cross(), torch.zeros(OUT, IN))
    a = prune_weight(W, "sparsegpt", LayerTarget(0.5), paired, blocksize=BLOCK)
    plain = InputStats.new(IN, device="cpu", want_hessian=True)
    plain.update(X)
    b = prune_weight(W, "sparsegpt", LayerTarget(0.5), plain, blocksize=BLOCK)
    assert torch.equal(a.W, b.W)


@pytest.mark.parametrize("target", [LayerTarget(0.5), LayerTarget(0.7), LayerTarget(0.5, 2, 4)])
def test_fitting_the_dense_model_reproduces_its_output_better(target: LayerTarget) -> None:
    W, X, X_d, paired = _paired_layer()
    plain = InputStats.new(IN, device="cpu", want_hessian=True)
    plain.update(X)

    to_model = prune_weight(W, "sparsegpt", target, paired, blocksize=BLOCK)
    to_layer = prune_weight(W, "sparsegpt", target, plain, blocksize=BLOCK)

    def error(W_new: torch.Tensor) -> float:  # against the dense model's output W X_d
        return float((X_d @ W.T - X @ W_new.T).square().sum() / (X_d @ W.T).square().sum())

    assert error(to_model.W) < 0.8 * error(to_layer.W)
    assert sparsity_of(to_model.W) == pytest.approx(target.ratio, abs=1e-6)
    if target.is_nm:
        assert nm_ok(to_model.W, target.n, target.m)


@pytest.mark.parametrize("target", [LayerTarget(0.5), LayerTarget(0.5, 2, 4)])
def test_fit_share_fits_that_part_of_the_drift(target: LayerTarget) -> None:
    """``fit_share`` s moves SparseGPT's target from the dense layer's output on the pruned inputs
    (s = 0: no cross statistics) to W X + s W (X_d - X): each share's result reproduces its own
    target better than the other shares' results do, and share 0 is plain SparseGPT exactly."""
    W, X, X_d, paired = _paired_layer(seed=3)
    plain = InputStats.new(IN, device="cpu", want_hessian=True)
    plain.update(X)
    shares = (0.0, 0.5, 1.0)
    results = {s: prune_weight(W, "sparsegpt", target, paired, blocksize=BLOCK, fit_share=s) for s in shares}
    assert torch.equal(results[0.0].W, prune_weight(W, "sparsegpt", target, plain, blocksize=BLOCK).W)

    def error(W_new: torch.Tensor, share: float) -> float:
        goal = X @ W.T + share * (X_d - X) @ W.T
        return float((goal - X @ W_new.T).square().sum() / goal.square().sum())

    for share in shares:
        own = error(results[share].W, share)
        for other in shares:
            if other != share:
                assert own < error(results[other].W, share), (share, other)


def test_cross_statistics_need_the_dense_input() -> None:
    paired = InputStats.new(IN, device="cpu", want_hessian=True, cross_out=OUT)
    with pytest.raises(SystemFault, match="y_dense - y"):
        paired.update(torch.randn(4, IN))
    with pytest.raises(SystemFault, match="y_dense - y"):
        paired.update(torch.randn(4, IN), torch.randn(4, IN))  # [4, in] is not [4, out]
    assert InputStats.new(IN, device="cpu", want_hessian=True).cross() is None


# ------------------------------------------------------------------------------------------------
# SparseGPT's sweep order (method.order)


def test_sweep_order_sorts_columns_or_whole_groups() -> None:
    from spruce.core.pruners import sweep_order

    H = torch.diag(torch.tensor([5.0, 1.0, 3.0, 2.0, 9.0, 0.5, 0.1, 4.0]))
    assert sweep_order(H, LayerTarget(0.5), "natural") is None
    assert sweep_order(H, LayerTarget(0.5), "auto").tolist() == [6, 5, 1, 3, 2, 7, 0, 4]  # ascending
    assert sweep_order(H, LayerTarget(0.5), "descending").tolist() == [4, 0, 7, 2, 3, 1, 5, 6]
    # 2:4: groups (0-3: total 11) and (4-7: 13.6) stay whole; auto puts the busier group first
    assert sweep_order(H, LayerTarget(0.5, 2, 4), "auto").tolist() == [4, 5, 6, 7, 0, 1, 2, 3]
    assert sweep_order(H, LayerTarget(0.5, 2, 4), "ascending").tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize(
    "target", [LayerTarget(0.5), LayerTarget(0.7), LayerTarget(0.5, 2, 4), LayerTarget(0.5, 4, 8)]
)
@pytest.mark.parametrize("order", ["auto", "ascending", "descending"])
def test_a_swept_order_is_the_stored_order_run_on_permuted_columns(target: LayerTarget, order: str) -> None:
    """Exact ratio, pattern in W's own order, and the same weights as permuting by hand."""
    from spruce.core.pruners import sweep_order

    W, stats = layer()
    H = stats.hessian()
    r = sparsegpt(W, H, target, blocksize=BLOCK, order=order)  # type: ignore[arg-type]
    assert sparsity_of(r.W) == pytest.approx(target.ratio, abs=1e-6)
    if target.is_nm:
        assert nm_ok(r.W, target.n, target.m)
    p = sweep_order(H, target, order)  # type: ignore[arg-type]
    assert p is not None and sorted(p.tolist()) == list(range(IN))
    by_hand = sparsegpt(W[:, p], H[p][:, p], target, blocksize=BLOCK)
    torch.testing.assert_close(r.W[:, p], by_hand.W)
    assert torch.equal(r.keep[:, p], by_hand.keep)


@pytest.mark.parametrize("target", [LayerTarget(0.5), LayerTarget(0.7), LayerTarget(0.5, 2, 4)])
def test_the_auto_order_reconstructs_better_than_the_stored_one(target: LayerTarget) -> None:
    # Inputs whose activity differs a lot between channels, as in real layers (the real model:
    # tests/model/test_sweep_order.py). Per seed it can go either way; on average it must win.
    ratios = []
    for seed in range(8):
        W, stats = layer(seed=seed)
        H = stats.hessian()
        auto = reconstruction_error(W, sparsegpt(W, H, target, blocksize=BLOCK, order="auto").W, H)
        stored = reconstruction_error(W, sparsegpt(W, H, target, blocksize=BLOCK, order="natural").W, H)
        ratios.append(auto / stored)
    assert sum(ratios) / len(ratios) < 0.97


def test_the_spec_checks_the_order() -> None:
    from spruce.core.spec import CompressionSpec

    base = {"model": "m", "sparsity": 0.5, "method": {"pruner": "sparsegpt"}}
    assert CompressionSpec.from_dict(base).order == "auto"
    with pytest.raises(SpecError) as err:
        CompressionSpec.from_dict({**base, "experimental": {"order": "sideways"}})
    assert err.value.param == "experimental.order"


def test_the_cli_passes_the_order() -> None:
    from spruce.cli.main import build_parser
    from spruce.cli.prune import spec_body
    from spruce.core.spec import CompressionSpec

    args = build_parser().parse_args(["prune", "--model", "m", "--sparsity", "0.5", "--method", "sparsegpt"])
    assert CompressionSpec.from_dict(spec_body(args)).order == "auto"
    args = build_parser().parse_args(["prune", "--model", "m", "--sparsity", "0.5", "--set", "order=natural"])
    assert spec_body(args)["experimental"]["order"] == "natural"
    args = build_parser().parse_args(["prune", "--model", "m", "--sparsity", "0.5", "--preset", "reference"])
    assert CompressionSpec.from_dict(spec_body(args)).order == "natural"  # the reference preset's


# -- row weights (method.row_weight) ----------------------------------------------------------


@pytest.mark.parametrize("target", [LayerTarget(0.5), LayerTarget(0.5, 2, 4)])
def test_row_weight_of_ones_changes_nothing(target: LayerTarget) -> None:
    W, stats = layer()
    plain = sparsegpt(W, stats.hessian(), target, blocksize=BLOCK, order="auto")
    ones = sparsegpt(W, stats.hessian(), target, blocksize=BLOCK, order="auto", row_weight=torch.ones(OUT))
    assert torch.equal(plain.keep, ones.keep)
    assert torch.equal(plain.W, ones.W)


@pytest.mark.parametrize("selection", ["layer", "block"])
@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_a_row_weight_is_pruning_the_rescaled_rows(selection: str, ratio: float) -> None:
    """The docstring's claim: the same as pruning diag(r) W and dividing the rows again."""
    W, stats = layer()
    H = stats.hessian()
    r = torch.exp(torch.randn(OUT, generator=torch.Generator().manual_seed(3)))
    got = sparsegpt(W, H, LayerTarget(ratio), blocksize=BLOCK, selection=selection, row_weight=r)  # type: ignore[arg-type]
    by_hand = sparsegpt(r[:, None] * W, H, LayerTarget(ratio), blocksize=BLOCK, selection=selection)  # type: ignore[arg-type]
    assert torch.equal(got.keep, by_hand.keep)
    torch.testing.assert_close(got.W, by_hand.W / r[:, None], rtol=1e-5, atol=1e-6)
    plain = sparsegpt(W, H, LayerTarget(ratio), blocksize=BLOCK, selection=selection)  # type: ignore[arg-type]
    assert not torch.equal(got.keep, plain.keep)  # the weights did move something
    assert sparsity_of(got.W) == pytest.approx(ratio, abs=1e-6)  # exact per layer all the same


@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_a_heavier_row_keeps_more_and_the_rest_pay_for_it(ratio: float) -> None:
    W, stats = layer()
    H = stats.hessian()
    plain = sparsegpt(W, H, LayerTarget(ratio), blocksize=BLOCK)
    i = int(plain.keep.sum(dim=1).argmin())  # the row that lost most
    r = torch.ones(OUT)
    r[i] = 10.0
    heavy = sparsegpt(W, H, LayerTarget(ratio), blocksize=BLOCK, row_weight=r)
    assert heavy.keep[i].sum() > plain.keep[i].sum()
    assert int((~heavy.keep).sum()) == int((~plain.keep).sum())


@pytest.mark.parametrize(
    ("target", "selection"),
    [(LayerTarget(0.5, 2, 4), "layer"), (LayerTarget(0.5, 4, 8), "layer"), (LayerTarget(0.5), "row")],
)
def test_per_row_selections_ignore_the_row_weight(target: LayerTarget, selection: str) -> None:
    W, stats = layer()
    H = stats.hessian()
    r = torch.exp(torch.randn(OUT, generator=torch.Generator().manual_seed(4)))
    plain = sparsegpt(W, H, target, blocksize=BLOCK, selection=selection)  # type: ignore[arg-type]
    weighted = sparsegpt(W, H, target, blocksize=BLOCK, selection=selection, row_weight=r)  # type: ignore[arg-type]
    assert torch.equal(plain.keep, weighted.keep)
    assert torch.equal(plain.W, weighted.W)


def test_prune_weight_passes_the_row_weight_to_sparsegpt_only() -> None:
    W, stats = layer()
    r = torch.ones(OUT)
    r[0] = 50.0
    for pruner in ("magnitude", "wanda"):  # they compare within a row: a row factor cancels
        assert torch.equal(
            run(W, pruner, LayerTarget(0.5), stats).W, run(W, pruner, LayerTarget(0.5), stats, row_weight=r).W
        )
    plain = run(W, "sparsegpt", LayerTarget(0.5), stats)
    assert run(W, "sparsegpt", LayerTarget(0.5), stats, row_weight=r).keep[0].sum() > plain.keep[0].sum()


def test_mlp_row_weights_by_hand() -> None:
    from spruce.core.pruners import mlp_row_weights
    from spruce.core.stats import OutputSensitivity

    g = torch.Generator().manual_seed(0)
    W_out = torch.randn(16, 6, generator=g)  # [hidden, mlp hidden]
    D = torch.randn(100, 6, generator=g) * torch.tensor([0.0, 1, 2, 3, 4, 5])  # channel 0: never moves h
    sens = OutputSensitivity.new(6, device="cpu")
    sens.update(D[:40])
    sens.update(D[40:])
    want = (D.square().mean(dim=0) * W_out.square().sum(dim=0)).sqrt()
    got = mlp_row_weights(W_out, sens)
    torch.testing.assert_close(got, want / want.max())
    assert float(got[0]) == 0.0 and float(got.max()) == 1.0
    with pytest.raises(SystemFault):
        _ = OutputSensitivity.new(3, device="cpu").mean_sq


def test_the_spec_and_the_cli_carry_the_row_weight() -> None:
    from spruce.cli.main import build_parser
    from spruce.cli.prune import spec_body
    from spruce.core.spec import CompressionSpec

    base = {"model": "m", "sparsity": 0.5, "method": {"pruner": "sparsegpt"}}
    spec = CompressionSpec.from_dict(base)
    assert spec.row_weight == "output"
    assert CompressionSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError) as err:
        CompressionSpec.from_dict({**base, "experimental": {"row_weight": "columns"}})
    assert err.value.param == "experimental.row_weight"
    args = build_parser().parse_args(
        ["prune", "--model", "m", "--sparsity", "0.5", "--set", "row_weight=none"]
    )
    assert CompressionSpec.from_dict(spec_body(args)).row_weight == "none"


@pytest.mark.engine
@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_compress_weighs_only_the_mlp_input_rows(tmp_path, sparsity: float) -> None:
    """On a tiny model: with row weights only gate/up change (each linear is pruned from the same
    statistics, so q/k/v/o/down do not see the difference), exactly as sparse, and it is reported."""
    from safetensors.torch import load_file

    from spruce.core.compress import compress
    from tests.tiny import tiny_job, tiny_model_dir

    model = tiny_model_dir(tmp_path / "models", "llama", layers=2, hidden=64)

    def pruned(row_weight: str) -> tuple[dict, dict[str, torch.Tensor]]:
        spec = tiny_job(model, sparsity, {"pruner": "sparsegpt", "row_weight": row_weight, "fit_to": "layer"})
        out = tmp_path / row_weight
        return compress(spec, out_dir=out).to_dict(), load_file(out / "hf" / "model.safetensors")

    report, weighted = pruned("output")
    _, plain = pruned("none")
    assert "row_weight" not in report["spec"]["experimental"] and report["plan"]["row_weight"] == "output"
    for key, W in plain.items():
        if ".mlp.gate_proj." in key or ".mlp.up_proj." in key:
            assert not torch.equal(weighted[key], W), key
            assert sparsity_of(weighted[key]) == pytest.approx(sparsity_of(W), abs=1e-6)
        elif "layers.1." not in key:  # layer 1 reads layer 0's (different) outputs
            assert torch.equal(weighted[key], W), key


def test_every_pruner_of_the_traits_table_has_one_step() -> None:
    assert list(PRUNE_STEPS) == list(PRUNER_TRAITS) == list(PRUNERS)


@pytest.mark.parametrize("pruner", PRUNERS)
def test_a_pruner_that_reads_data_refuses_to_run_without_statistics(pruner: str) -> None:
    W, _ = layer()
    if traits(pruner).reads_data:
        with pytest.raises(SystemFault, match=pruner):
            prune_weight(W, pruner, LayerTarget(0.5), None)
    else:
        assert sparsity_of(prune_weight(W, pruner, LayerTarget(0.5), None).W) == 0.5


@pytest.mark.parametrize("pruner", PRUNERS)
def test_only_a_pruner_that_swaps_reads_swap_rounds(pruner: str) -> None:
    W, stats = layer()
    plain = run(W, pruner, LayerTarget(0.5), stats)
    swapped = run(W, pruner, LayerTarget(0.5), stats, swap_rounds=5)
    assert (swapped.swaps is not None) is traits(pruner).swaps
    if not traits(pruner).swaps:
        assert torch.equal(plain.W, swapped.W)


def test_an_unknown_pruner_is_refused_as_the_spec_field() -> None:
    W, stats = layer()
    with pytest.raises(SpecError, match="'obc'") as err:
        prune_weight(W, "obc", LayerTarget(0.5), stats)
    assert err.value.param == "method.pruner"
