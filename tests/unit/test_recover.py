"""Induction's recovery scales (core/induction/recover.py): trained on the pruned layer with its
mask fixed, folded exactly into the sparse weights, guarded on held-out sequences; and their
place in a compression job (both walks, report, spec)."""

from __future__ import annotations

import copy

import pytest
import torch

from spruce.core.arch import arch_for, decoder_layers, layer_linears
from spruce.core.errors import SpecError
from spruce.core.induction.batches import token_relative_errors
from spruce.core.induction.recover import WARMUP_STEPS, recover_layer
from spruce.core.nested import cut_batch
from spruce.core.sparsity import nm_ok
from spruce.core.spec import CompressionSpec
from spruce.core.walker import LayerBatch, run_layer
from tests.tiny import tiny_job, tiny_model, tiny_tokenizer
from tests.unit.test_induction import TARGETS, batches_for, prune_layer

pytestmark = pytest.mark.unit


def _pruned_layer(pruner: str = "wanda", target: str = "50%"):
    """Layer 1 of a tiny Llama, pruned, and targets it can reach: the outputs of the same pruned
    layer with every linear's rows and columns scaled by known factors in [0.75, 1.33]. (A random
    model's pruning error is noise, with nothing for a scale to learn from a few hundred tokens;
    on the real model it is not: docs/induction.md, "Recovery".)"""
    model = tiny_model("llama", hidden=64)
    arch = arch_for(model)
    layer = decoder_layers(model, arch)[1]
    batches = batches_for(model, arch, samples=16, bs=8)
    prune_layer(layer, arch, batches, pruner, TARGETS[target])
    reachable = copy.deepcopy(layer)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for lin in layer_linears(reachable, arch).values():
            r = torch.exp(0.29 * (2 * torch.rand(lin.out_features, generator=g) - 1))
            c = torch.exp(0.29 * (2 * torch.rand(lin.in_features, generator=g) - 1))
            lin.weight.mul_(r[:, None] * c[None, :])
    return layer, arch, batches, run_layer(reachable, batches, device="cpu")


def _recover(layer, arch, batches, targets, *, epochs: int, lr: float = 0.05, **kw):
    """``recover_layer`` on the CPU with the seeded generator every test here uses."""
    return recover_layer(
        layer, arch, batches, targets, device=torch.device("cpu"), epochs=epochs, lr=lr,
        generator=torch.Generator().manual_seed(0), **kw,
    )  # fmt: skip


def _token_mse(targets: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    """The recovery's objective: each token's relative squared error, averaged over all tokens."""
    return float(
        torch.cat(
            [token_relative_errors(o, Y).flatten() for o, Y in zip(outputs, targets, strict=True)]
        ).mean()
    )


def _zeros(layer, arch) -> dict[str, torch.Tensor]:
    return {name: lin.weight == 0 for name, lin in layer_linears(layer, arch).items()}


@pytest.mark.parametrize("target", ["50%", "2:4"])
def test_recovery_lowers_the_held_out_error_and_keeps_every_zero(target: str) -> None:
    layer, arch, batches, dense = _pruned_layer(target=target)
    zeros = _zeros(layer, arch)
    before = copy.deepcopy(layer)
    result = _recover(layer, arch, batches, dense, epochs=3)
    assert result.chosen == "trained"
    assert result.final_loss < result.identity_loss
    assert len(result.losses) == 3 * (16 - 2)  # one sequence per step; sequences 0 and 8 held out
    # the fold keeps the mask: zeros stay, kept weights stay non-zero
    assert all(torch.equal(z, zeros[name]) for name, z in _zeros(layer, arch).items())
    for name, lin in layer_linears(layer, arch).items():
        assert not torch.equal(lin.weight, layer_linears(before, arch)[name].weight)
        if TARGETS[target].is_nm:
            assert nm_ok(lin.weight, 2, 4)
    # what was folded is what the guard measured: sequences 0 and 8 (the check subset)
    held = [LayerBatch(b.hidden[:1], cut_batch(b.kwargs, b.hidden.shape[0], 0, 1)) for b in batches]
    got = _token_mse([Y[:1] for Y in dense], run_layer(layer, held, device="cpu"))
    assert got == pytest.approx(result.final_loss, rel=1e-4)
    plain = _token_mse([Y[:1] for Y in dense], run_layer(before, held, device="cpu"))
    assert plain == pytest.approx(result.identity_loss, rel=1e-4)


def test_recovery_keeps_the_layer_where_it_cannot_win() -> None:
    """Targets the pruned layer already reproduces: nothing to recover, the layer is untouched."""
    layer, arch, batches, _ = _pruned_layer()
    own = run_layer(layer, batches, device="cpu")
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    result = _recover(layer, arch, batches, own, epochs=1)
    assert result.chosen == "identity" and result.final_loss == result.identity_loss
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in before.items())


def test_weight_updates_reach_what_scales_cannot_and_keep_every_zero() -> None:
    """``weights_lr``: an additive update of the kept weights trains with the scales. Targets
    from the pruned layer with its kept weights perturbed at random (no row / column scaling
    reproduces that): the weights get closer than the scales alone, the mask stays."""
    model = tiny_model("llama", hidden=64)
    arch = arch_for(model)
    layer = decoder_layers(model, arch)[1]
    batches = batches_for(model, arch, samples=16, bs=8)
    prune_layer(layer, arch, batches, "wanda", TARGETS["2:4"])
    zeros = _zeros(layer, arch)
    perturbed = copy.deepcopy(layer)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for lin in layer_linears(perturbed, arch).values():
            lin.weight.add_(
                0.3 * lin.weight.abs().mean() * torch.randn(lin.weight.shape, generator=g) * (lin.weight != 0)
            )
    targets = run_layer(perturbed, batches, device="cpu")

    def recover(weights_lr: float):
        fresh = copy.deepcopy(layer)
        r = _recover(fresh, arch, batches, targets, epochs=3, lr=0.02, weights_lr=weights_lr)
        return fresh, r

    _, scales = recover(0.0)
    folded, weights = recover(1e-2)
    assert weights.chosen == "trained" and weights.final_loss < 0.6 * scales.final_loss
    assert weights.info["weights_lr"] == 1e-2
    # params: the scales plus one update per kept weight
    kept = sum(int((~z).sum()) for z in zeros.values())
    assert weights.info["params"] == scales.info["params"] + kept
    assert all(torch.equal(z, zeros[name]) for name, z in _zeros(folded, arch).items())
    for lin in layer_linears(folded, arch).values():
        assert nm_ok(lin.weight, 2, 4)


def test_samples_limit_the_recovery_to_the_first_sequences() -> None:
    layer, arch, batches, dense = _pruned_layer()
    result = _recover(layer, arch, batches, dense, epochs=2, samples=5)
    assert len(result.losses) == 2 * (5 - 1)  # sequence 0 held out, 4 steps per epoch


def test_the_first_step_moves_each_scale_by_a_warm_up_share_of_the_rate() -> None:
    """Adam's first step is +-rate on every parameter; the ramp cuts it to rate / WARMUP_STEPS."""
    layer, arch, batches, dense = _pruned_layer()
    result = _recover(layer, arch, batches, dense, epochs=1, samples=2)
    assert len(result.losses) == 1  # sequence 0 held out: one step
    largest = max(m["max_abs_log"] for m in result.info["moved"].values())
    assert largest == pytest.approx(0.05 / WARMUP_STEPS, rel=1e-3)


def test_the_objective_weighs_a_massive_token_as_any_other() -> None:
    """Per token, not per batch: a 10% error costs the same on a token 100x the others' norm
    (Gemma 3's residual stream has a few) as on any other, and an error on the big token costs no
    more than the same relative error elsewhere."""
    Y = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(0))
    Y[0, 3] *= 100.0
    errors = token_relative_errors(Y * 1.1, Y)
    assert errors.shape == (2, 6)
    torch.testing.assert_close(errors, torch.full((2, 6), 0.01))
    only_big, only_small = Y.clone(), Y.clone()
    only_big[0, 3] *= 1.1
    only_small[1, 2] *= 1.1
    assert token_relative_errors(only_big, Y).sum() == pytest.approx(
        float(token_relative_errors(only_small, Y).sum())
    )


def test_gradient_reaches_row_and_column_scales_of_every_linear() -> None:
    layer, arch, batches, dense = _pruned_layer()
    result = _recover(layer, arch, batches, dense, epochs=1)
    moved = result.info["moved"]
    assert set(moved) == set(arch.linears)
    assert all(m["rows"] > 0 and m["cols"] > 0 for m in moved.values())


@pytest.mark.parametrize(
    ("field", "value"),
    [("recover_epochs", -2), ("recover_epochs", 101), ("recover_lr", 0.0), ("recover_weights_lr", -0.1),
     ("recover_weights_lr", 2.0)],
)  # fmt: skip
def test_spec_rejects_bad_recovery_settings(field: str, value: object) -> None:
    body = {"model": "m", "sparsity": 0.5, "method": {"induction": True},
            "experimental": {"induction": {field: value}}}  # fmt: skip
    with pytest.raises(SpecError) as info:
        CompressionSpec.from_dict(body)
    assert info.value.param == f"experimental.induction.{field}"


def test_recovery_defaults() -> None:
    def spec(pruner: str = "wanda", sparsity: object = 0.5, enabled: bool = False, **induction):
        body = {"model": "m", "sparsity": sparsity, "method": {"pruner": pruner, "induction": enabled},
                "experimental": {"induction": induction}}  # fmt: skip
        return CompressionSpec.from_dict(body)

    assert spec(enabled=True).recovers and spec(enabled=True).induction.recover_epochs_for("wanda") == 1
    assert not spec(enabled=True, recover_epochs=0).recovers and not spec(enabled=False).recovers
    # magnitude's budget (3x a data-free step) pays for neither training nor recovery by default
    assert (
        not spec("magnitude", enabled=True).recovers and spec("magnitude", enabled=True).induction_epochs == 0
    )
    assert spec("magnitude", enabled=True, recover_epochs=1).recovers
    # auto: the dense model's outputs where the walk carries them anyway, else the dense layer's
    assert not spec(enabled=True).recovery_fits_model  # Wanda with swaps: no scales trained, no fit
    assert spec(enabled=True, targets="model").recovery_fits_model
    # magnitude's scales train against the model where they train at all
    assert spec("magnitude", enabled=True, epochs=1, recover_epochs=1).recovery_fits_model
    assert not spec("magnitude", enabled=True, recover_epochs=1).recovery_fits_model  # statistics start only
    assert spec("sparsegpt", "2:4", enabled=True).recovery_fits_model  # SparseGPT fits the dense model
    assert not spec(
        "magnitude", enabled=True, epochs=1, recover_epochs=1, targets="layer"
    ).recovery_fits_model
    # samples: all but for magnitude (one sequence); 0 is every sequence
    assert spec(enabled=True).induction.samples_for("wanda") == 0
    assert spec("magnitude", enabled=True).induction.samples_for("magnitude") == 1
    assert spec("magnitude", enabled=True, samples=0).induction.samples_for("magnitude") == 0


def _structured_model_dir(out):
    """A tiny Llama whose token embeddings share one direction, as real activations do: its
    channels are then correlated, so pruning shrinks what each row writes along that direction
    systematically, and a row or column scale learned on some tokens carries over to others.
    (With independent random channels the pruning error is noise: nothing to recover.)"""
    model = tiny_model("llama", layers=2, hidden=64)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.add_(2.0 * emb.std() * torch.randn(emb.shape[1], generator=g))
    model.save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


# (pruner, sparsity, method extras, induction extras, what recovery trains against): the layer
# walk (magnitude, the paper's Wanda, sequential "layer") and the walk that prunes in turn inside
# one forward (Wanda with swaps, SparseGPT fitting the dense model)
JOBS = [
    # magnitude with training (its quality setting): the scales train against the dense model,
    # whose stream is there (its defaults train neither scales nor recovery)
    ("magnitude", 0.5, {}, {"epochs": 1, "samples": 0}, "model"),
    ("wanda", "2:4", {"swap_rounds": 0}, {}, "model"),
    ("wanda", "2:4", {}, {}, "layer"),  # scales skipped, no dense stream: auto takes the dense layer
    ("wanda", "2:4", {}, {"targets": "model"}, "model"),  # ... unless asked for
    ("sparsegpt", "2:4", {}, {}, "model"),  # fits the dense model: its stream is there
    ("sparsegpt", 0.5, {"sequential": "layer"}, {}, "model"),
    ("wanda", 0.5, {"sequential": "layer"}, {"targets": "model"}, "model"),  # recovery alone moves the stream
    ("magnitude", 0.5, {}, {"epochs": 1, "samples": 0, "targets": "layer"}, "layer"),
]


@pytest.mark.engine
@pytest.mark.parametrize(("pruner", "sparsity", "extra", "induction", "against"), JOBS)
def test_jobs_recover_every_layer_and_keep_the_sparsity(
    tmp_path, monkeypatch, pruner: str, sparsity, extra: dict, induction: dict, against: str
) -> None:
    """The guard's choice is tested above; here it takes the trained scales whatever they score,
    so that every layer's fold goes through each walk: the layer keeps its zeros and its N:M
    groups, the walk hands the recovered layer's outputs on, the report records each layer."""
    from safetensors.torch import load_file

    from spruce.core.compress import compress

    monkeypatch.setattr("spruce.core.induction.recover._MARGIN", float("-inf"))
    model = _structured_model_dir(tmp_path / "model")

    def run(recover_epochs: int) -> tuple[dict, dict[str, torch.Tensor]]:
        settings = {"enabled": True, "batch_size": 2, "permute": False,
                    "recover_epochs": recover_epochs, "recover_lr": 0.02, **induction}  # fmt: skip
        spec = tiny_job(model, sparsity, {"pruner": pruner, **extra, "induction": settings}, samples=8)
        out = tmp_path / f"out-{recover_epochs}"
        return compress(spec, out_dir=out).to_dict(), load_file(out / "hf" / "model.safetensors")

    report, recovered = run(2)
    plain_report, plain = run(0)
    summary = report["induction"]["recovery"]
    assert report["induction"]["recover_epochs"] == 2 and plain_report["induction"]["recovery"] is None
    assert summary == {**summary, "layers": 2, "layers_recovered": 2, "targets": against}
    for row in report["layers"]:
        rec = row["recovery"]
        assert len(rec["losses"]) == 2 * (8 - 1) and rec["info"]["targets"] == against
        assert rec["info"]["chosen"] == "trained"
        assert rec["final_loss"] == pytest.approx(rec["info"]["check_losses"]["trained"], rel=1e-5)
        assert row["induction_seconds"] >= rec["seconds"] - 1e-3 and rec["seconds"] > 0
    assert all("recovery" not in row for row in plain_report["layers"])
    # layer 0 has the same inputs in both runs: the same pruning, then rescaled, zeros kept
    linears = [k for k in plain if k.endswith("_proj.weight")]
    first = [k for k in linears if ".layers.0." in k]
    assert len(first) == 7
    for k in first:
        assert not torch.equal(recovered[k], plain[k])
        assert torch.equal(recovered[k] == 0, plain[k] == 0)
    assert all(torch.equal(recovered[k], plain[k]) for k in plain if k not in linears and ".layers." not in k)
    if isinstance(sparsity, str):
        assert all(nm_ok(recovered[k], 2, 4) for k in linears)
    # the walk measured (and handed on) the recovered layer's outputs, not the pruned ones
    assert report["layers"][0]["rel_error"] != plain_report["layers"][0]["rel_error"]


def test_the_cli_flags_reach_the_spec() -> None:
    from spruce.cli.main import build_parser
    from spruce.cli.prune import spec_body

    args = ["prune", "--model", "m", "--sparsity", "2:4", "--induction", "--set", "induction.recover_epochs=2",
            "--set", "induction.recover_lr=0.02", "--experimental", '{"induction": {"samples": 4}}',
            "--set", "induction.recover_weights_lr=0"]  # fmt: skip
    spec = CompressionSpec.from_dict(spec_body(build_parser().parse_args(args)))
    ind = spec.induction
    assert (ind.recover_epochs, ind.recover_lr, ind.samples, ind.recover_weights_lr) == (2, 0.02, 4, 0.0)
    bad = spec_body(build_parser().parse_args([*args[:6], "--set", "induction.samples=-2"]))
    with pytest.raises(SpecError) as info:
        CompressionSpec.from_dict(bad)
    assert info.value.param == "experimental.induction.samples"
