"""Induction's N:M channel permutation: the search never raises the cost and finds the optimum on
a case small enough to enumerate, the fold is exact on every architecture, and a compression run
with it keeps the pattern and records what it gained."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from spruce.core.arch import arch_for, decoder_layers
from spruce.core.errors import SpecError
from spruce.core.induction.permute import (
    LayerPermutation,
    choose_permutations,
    fold_permutation_,
    nm_permutation,
    permute_inputs_,
    pruned_cost,
    tied_head_permutation,
)
from spruce.core.induction.transform import plan_layer
from spruce.core.passes import collect_stats
from spruce.core.sparsity import LayerTarget
from spruce.core.spec import CompressionSpec
from spruce.core.walker import capture_inputs
from tests.tiny import ARCHES, VOCAB, tiny_model

pytestmark = pytest.mark.unit


def _valid(p: torch.Tensor, n: int) -> bool:
    return sorted(p.tolist()) == list(range(n))


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
def test_search_returns_a_permutation_that_never_costs_more(n: int, m: int) -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(4):
        # columns of very different importance (as activation outliers make them) and plain ones
        col = torch.rand(64, generator=g) ** (4 * trial) * 10 + 0.01
        C = (torch.randn(24, 64, generator=g) * col).square()
        p = nm_permutation(C, n, m, rounds=50, generator=torch.Generator().manual_seed(trial))
        assert _valid(p, 64)
        assert float(pruned_cost(C[:, p], n, m)) <= float(pruned_cost(C, n, m)) * (1 + 1e-6)


def test_search_separates_heavy_columns_that_share_a_group() -> None:
    # Columns 0-3 (one 2:4 group) carry almost all the cost: in place, two of them must be dropped
    # in every row; spread over four groups, none is.
    C = torch.full((8, 16), 0.01)
    C[:, :4] = 100.0
    p = nm_permutation(C, 2, 4, rounds=20, generator=torch.Generator().manual_seed(0))
    assert float(pruned_cost(C, 2, 4)) == pytest.approx(8 * (200 + 3 * 0.02))
    assert float(pruned_cost(C[:, p], 2, 4)) == pytest.approx(8 * 4 * 0.02)
    assert len({i // 4 for i, c in enumerate(p.tolist()) if c < 4}) == 4  # the heavy four: one per group


def _best_partition_cost(C: torch.Tensor, n: int, m: int) -> float:
    """Brute force over every way to split the columns into groups of m."""
    cols = list(range(C.shape[1]))
    best = float("inf")
    for perm in itertools.permutations(cols[1:]):
        order = [0, *perm]
        if any(order[i] > order[i + m] for i in range(0, len(order) - m, m)):
            continue  # groups listed by their first member: visit each partition once
        best = min(best, float(pruned_cost(C[:, order], n, m)))
    return best


def test_search_finds_the_optimum_of_a_small_case() -> None:
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        C = (torch.randn(5, 8, generator=g) * (torch.rand(8, generator=g) * 4)).square()
        p = nm_permutation(C, 2, 4, rounds=200, generator=torch.Generator().manual_seed(0))
        assert float(pruned_cost(C[:, p], 2, 4)) == pytest.approx(_best_partition_cost(C, 2, 4), rel=1e-5)


def test_tied_head_permutation_moves_channels_inside_heads_alike_for_a_kv_head() -> None:
    n_kv, groups, hd = 2, 3, 8
    C = torch.rand(6, n_kv * groups * hd, generator=torch.Generator().manual_seed(0)) ** 4
    p = tied_head_permutation(
        C, n_kv, groups, hd, 2, 4, rounds=50, generator=torch.Generator().manual_seed(0)
    )
    assert _valid(p, n_kv * groups * hd)
    heads = p.reshape(n_kv * groups, hd)
    for h in range(n_kv * groups):
        assert set((heads[h] // hd).tolist()) == {h}  # never leaves its head
        assert torch.equal(heads[h] % hd, heads[(h // groups) * groups] % hd)  # same order per kv head
    assert float(pruned_cost(C[:, p], 2, 4)) <= float(pruned_cost(C, 2, 4))


@pytest.mark.parametrize("arch_name", ARCHES)
def test_fold_of_random_permutations_keeps_logits(arch_name: str) -> None:
    model = tiny_model(arch_name)
    arch = arch_for(model)
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
    g = torch.Generator().manual_seed(1)
    for layer in decoder_layers(model, arch):
        plan = plan_layer(layer, arch)
        o_in = plan.n_heads * plan.head_dim
        # a random within-head order per kv head, shared by its q heads
        per_kv = [torch.randperm(plan.head_dim, generator=g) for _ in range(plan.n_kv)]
        o = torch.cat([h * plan.head_dim + per_kv[h // plan.groups] for h in range(plan.n_heads)])
        assert _valid(o, o_in)
        before = {k: v.detach().clone() for k, v in layer.named_parameters()}  # Phi-3: split parts
        fold_permutation_(layer, plan, LayerPermutation(torch.randperm(plan.inter, generator=g), o))
        moved = [k for k, v in layer.named_parameters() if not torch.equal(before[k], v)]
        assert {f"{p}.weight" for p in (arch.o, arch.v, arch.mlp_out, *arch.mlp_in)} <= set(moved)
    with torch.no_grad():
        new = model(ids).logits
    torch.testing.assert_close(new, ref, atol=1e-5 * float(ref.abs().max()), rtol=0)


@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt"])
def test_choose_fold_and_reorder_statistics_agree(pruner: str) -> None:
    """After the fold, the reordered statistics equal statistics collected afresh, and the chosen
    order does not raise the pruner's cost on o or down."""
    model = tiny_model("llama")
    arch = arch_for(model)
    ids = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(0))
    batches = capture_inputs(model, arch, list(ids.split(2)), device="cpu")
    layer = decoder_layers(model, arch)[0]
    plan = plan_layer(layer, arch)
    stats, _ = collect_stats(layer, arch, batches, device="cpu", want_hessian=True)
    target = LayerTarget(0.5, 2, 4)
    cw = {arch.mlp_out: torch.rand(plan.inter, generator=torch.Generator().manual_seed(2)) + 0.5}
    perm = choose_permutations(
        layer, plan, target, pruner, stats, cw, rounds=50, generator=torch.Generator().manual_seed(0)
    )
    for group in ("down", "o"):
        assert perm.info[group]["cost_after"] <= perm.info[group]["cost_before"] * (1 + 1e-6)
    old_cw = cw[arch.mlp_out].clone()
    fold_permutation_(layer, plan, perm)
    permute_inputs_(plan, perm, stats, cw)
    assert perm.down is not None
    assert torch.equal(cw[arch.mlp_out], old_cw[perm.down])
    fresh, _ = collect_stats(layer, arch, batches, device="cpu", want_hessian=True)
    for path in (arch.o, arch.mlp_out):
        torch.testing.assert_close(stats[path].sq_sum, fresh[path].sq_sum, rtol=1e-5, atol=1e-5)
        assert stats[path].H is not None and fresh[path].H is not None
        torch.testing.assert_close(stats[path].H, fresh[path].H, rtol=1e-5, atol=1e-4)


def test_unstructured_targets_are_not_permuted() -> None:
    model = tiny_model("llama")
    arch = arch_for(model)
    layer = decoder_layers(model, arch)[0]
    perm = choose_permutations(layer, plan_layer(layer, arch), LayerTarget(0.5), "magnitude", {}, {})
    assert perm.down is None and perm.o is None


def _run(tmp_path, folder, **induction) -> dict:
    from spruce.core.compress import compress

    spec = CompressionSpec.from_dict(
        {
            "model": str(folder),
            "sparsity": "2:4",
            # swap_rounds 0: induce_layer permutes (with Wanda's swaps the walk does: below)
            "method": {"pruner": "wanda", "induction": True},
            "calibration": {"source": "pydoc", "samples": 4, "seq_len": 32},
            "evaluation": {"sources": ["pydoc"]},
            "experimental": {
                "swap_rounds": 0,
                "induction": {"epochs": 0, **induction},
                "evaluation": {"seq_len": 32, "max_windows": 2},
            },
        }
    )
    out = tmp_path / json.dumps(induction, sort_keys=True).replace('"', "")[:40]
    return compress(spec, out_dir=out).to_dict()


@pytest.mark.engine
def test_a_run_with_permutation_keeps_two_four_and_reports_the_gain(tmp_path, tiny_dirs) -> None:
    folder = tiny_dirs["llama"]
    on = _run(tmp_path, folder)
    off = _run(tmp_path, folder, permute=False)
    for report in (on, off):
        assert report["sparsity"]["nm_ok"] is True
    infos = [r["induction"]["info"] for r in on["layers"]]
    perms = [i["permutation"] for i in infos]
    assert all(p["down"]["cost_after"] <= p["down"]["cost_before"] for p in perms)
    assert any(p["down"]["change"] < 0 for p in perms)  # random weights: something to gain
    for info, p in zip(infos, perms, strict=True):
        # kept only where a permuted candidate beat the plain pruning of the layer as it came
        checks = info["check_losses"]
        assert p["kept"] == info["chosen"].startswith("permuted ")
        assert checks[info["chosen"]] <= checks["identity"]
    assert all("permutation" not in i for i in (r["induction"]["info"] for r in off["layers"]))


# "layer": the walk that collects every group's statistics before pruning; "auto" (here "linear"):
# the default walk for this fit, which prunes the linears in turn and permutes o and down inside
# the forward as it reaches them.
# Wanda with swaps (its default) skips the scales: the walk permutes the same way, guarded by the
# swaps' own objective, in both walks ("auto" is "linear" there too).
@pytest.mark.engine
@pytest.mark.parametrize("pruner", ["sparsegpt", "wanda"])
@pytest.mark.parametrize("sequential", ["layer", "auto"])
def test_the_walk_permutes_after_its_statistics_where_the_scales_are_skipped(
    tmp_path, tiny_dirs, sequential: str, pruner: str
) -> None:
    from spruce.core.compress import compress

    def run(permute: bool) -> dict:
        spec = CompressionSpec.from_dict(
            {
                "model": str(tiny_dirs["llama"]),
                "sparsity": "2:4",
                "method": {"pruner": pruner, "induction": True},
                "calibration": {"source": "pydoc", "samples": 4, "seq_len": 32},
                "evaluation": {"sources": ["pydoc"]},
                "experimental": {
                    "sequential": sequential,
                    "induction": {"permute": permute},
                    "evaluation": {"seq_len": 32, "max_windows": 2},
                },
            }
        )
        return compress(spec, out_dir=tmp_path / str(permute)).to_dict()

    on, off = run(True), run(False)
    assert on["induction"]["scales_skipped"] is not None
    assert on["sequential"] == ("layer" if sequential == "layer" else "linear")
    assert on["sparsity"]["nm_ok"] is True
    for r in on["layers"]:
        for group in ("o", "down"):
            g = r["permutation"][group]
            assert g["cost_after"] <= g["cost_before"] * (1 + 1e-6)
            # kept only where the pruner's own fit (SparseGPT's to the dense model, Wanda's swaps'
            # objective) came out better
            assert g["kept"] == (g["fit_error_after"] < g["fit_error_before"])
    assert all("permutation" not in r for r in off["layers"])
    assert on["perplexity"] != off["perplexity"]


def test_spec_checks_permute_settings() -> None:
    base = {"model": "m", "sparsity": "2:4", "method": {"induction": True}}
    with pytest.raises(SpecError) as err:
        CompressionSpec.from_dict({**base, "experimental": {"induction": {"permute": "yes"}}})
    assert err.value.param == "experimental.induction.permute"
    with pytest.raises(SpecError) as err:
        CompressionSpec.from_dict({**base, "experimental": {"induction": {"permute_rounds": -2}}})
    assert err.value.param == "experimental.induction.permute_rounds"
    ind = CompressionSpec.from_dict(base).induction
    assert ind.permute is True and ind.permute_rounds == -1
    assert (ind.rounds_for("sparsegpt"), ind.rounds_for("wanda"), ind.rounds_for("magnitude")) == (
        100,
        10,
        10,
    )
    # without training the permutation is all of induction's work: more rounds
    assert (ind.rounds_for("sparsegpt", trains=False), ind.rounds_for("wanda", trains=False)) == (100, 50)
    # ... except magnitude, whose untrained default cannot pay for a search: none
    assert ind.rounds_for("magnitude", trains=False) == 0
    # epochs -1: one pass, none for Wanda with swaps, unstructured SparseGPT or magnitude; a number
    # given is kept
    assert ind.epochs == -1
    cases = [("wanda", 20, True), ("wanda", 0, True), ("magnitude", 0, False), ("sparsegpt", 0, True)]
    assert [ind.epochs_for(*c) for c in cases] == [0, 1, 0, 1]
    assert (ind.epochs_for("sparsegpt", 0, False), ind.epochs_for("wanda", 0, False)) == (0, 1)
    two = CompressionSpec.from_dict({**base, "experimental": {"induction": {"epochs": 2}}})
    assert two.induction.epochs_for("wanda", 20, True) == 2 and two.induction_epochs == 2
    chosen = CompressionSpec.from_dict({**base, "experimental": {"induction": {"permute_rounds": 0}}})
    assert chosen.induction.rounds_for("sparsegpt") == 0


def test_the_cli_setting_turns_the_permutation_off() -> None:
    from spruce.cli.main import build_parser
    from spruce.cli.prune import spec_body

    base = ["prune", "--model", "m", "--sparsity", "2:4", "--induction"]
    on = spec_body(build_parser().parse_args(base))
    off = spec_body(build_parser().parse_args([*base, "--set", "induction.permute=false"]))
    assert "experimental" not in on and CompressionSpec.from_dict(on).induction.permute  # the default: on
    assert off["experimental"]["induction"]["permute"] is False
    assert CompressionSpec.from_dict(off).induction.permute is False
