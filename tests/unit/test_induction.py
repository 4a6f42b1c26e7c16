"""Sparsity Induction on tiny random models: exact folding, gradients through the mask, lower
pruned error than plain pruning, consistency of the training masks with the pruner's, spec checks."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from spruce.core.arch import arch_for, decoder_layers, layer_linears
from spruce.core.errors import SpecError
from spruce.core.induction import fold_, induce_layer, plan_layer
from spruce.core.induction.batches import first_sequences, split_minibatches, target_pieces, targets_for
from spruce.core.induction.init import init_transform
from spruce.core.induction.masks import hard_and_threshold, keep_mask
from spruce.core.induction.train import dense_pass
from spruce.core.induction.trainer import Trainer
from spruce.core.induction.transform import Transform
from spruce.core.nested import cut_batch
from spruce.core.passes import collect_stats
from spruce.core.pruners import prune_weight
from spruce.core.sparsity import LayerTarget, mask_for, nm_ok
from spruce.core.spec import CompressionSpec, InductionSpec
from spruce.core.stats import InputStats
from spruce.core.walker import LayerBatch, capture_inputs, run_layer
from tests.tiny import ARCHES, VOCAB, tiny_config, tiny_job, tiny_model

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")
TARGETS = {"50%": LayerTarget(0.5), "2:4": LayerTarget(0.5, 2, 4)}


def batches_for(
    model, arch, *, samples: int = 8, seq: int = 32, bs: int = 4, seed: int = 0
) -> list[LayerBatch]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (samples, seq), generator=g)
    return capture_inputs(model, arch, list(ids.split(bs)), device="cpu")


def random_transform(layer, arch, seed: int = 1) -> Transform:
    """A transform with every parameter random (scales far from 1, shifts far from 0)."""
    g = torch.Generator().manual_seed(seed)
    T = Transform.identity(plan_layer(layer, arch), device="cpu", shifts=True, qk=True)
    for t in T.tensors():
        t.copy_(0.5 * torch.randn(t.shape, generator=g))
    return T


def rel_mse(Y: list[torch.Tensor], Y_hat: list[torch.Tensor]) -> float:
    return sum(float((a - b).square().sum()) for a, b in zip(Y, Y_hat, strict=True)) / sum(
        float(a.square().sum()) for a in Y
    )


def prune_layer(layer, arch, batches, pruner, target, col_weights=None, swap_rounds: int = 0) -> None:
    want = pruner == "sparsegpt" or swap_rounds > 0
    stats, _ = collect_stats(layer, arch, batches, device="cpu", want_hessian=want)
    for name, lin in layer_linears(layer, arch).items():
        cw = (col_weights or {}).get(name)
        r = prune_weight(
            lin.weight.data, pruner, target, stats[name], blocksize=16, col_weight=cw, swap_rounds=swap_rounds
        )
        lin.weight.data.copy_(r.W)


# ------------------------------------------------------------------------------------------------
# Folding


@pytest.mark.parametrize("arch_name", ARCHES)
def test_fold_keeps_logits_with_random_transforms(arch_name: str) -> None:
    model = tiny_model(arch_name)
    arch = arch_for(model)
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for i, layer in enumerate(decoder_layers(model, arch)):
        fold_(layer, plan_layer(layer, arch), random_transform(layer, arch, seed=i + 1))
    with torch.no_grad():
        new = model(ids).logits
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    # every linear weight and both norm weights of every layer moved (not an identity fold)
    assert len(changed) >= len(decoder_layers(model, arch)) * (len(arch.linears) + 2)
    torch.testing.assert_close(new, ref, atol=1e-5 * float(ref.abs().max()), rtol=0)


def test_plans_name_the_foldable_transforms() -> None:
    llama, qwen, opt = (tiny_model(a) for a in ("llama", "qwen2", "opt"))
    p_llama = plan_layer(decoder_layers(llama, arch_for(llama))[0], arch_for(llama))
    p_qwen = plan_layer(decoder_layers(qwen, arch_for(qwen))[0], arch_for(qwen))
    p_opt = plan_layer(decoder_layers(opt, arch_for(opt))[0], arch_for(opt))
    # RMSNorm has no bias and Qwen2's o_proj has none: no shift folds into an existing bias there.
    for p in (p_llama, p_qwen):
        assert (p.attn_shift, p.o_shift, p.mlp_shift) == (False, False, False)
        assert p.down_scale and p.groups == 2 and p.qk_width == p.head_dim // 2
    assert (p_opt.attn_shift, p_opt.o_shift, p_opt.mlp_shift, p_opt.down_scale) == (True, True, True, True)
    assert p_opt.groups == 1 and p_opt.qk_width == p_opt.head_dim


@pytest.mark.parametrize(
    ("arch_name", "offset", "qk_pair", "rotary_dim"),
    [("gemma2", 1.0, True, 16), ("gemma3_text", 1.0, False, 16), ("gemma3", 1.0, False, 16),
     ("qwen3", 0.0, False, 16), ("phi3", 0.0, True, 12), ("llama3", 0.0, True, 16)],
)  # fmt: skip
def test_plans_of_the_other_families(arch_name: str, offset: float, qk_pair: bool, rotary_dim: int) -> None:
    """Gemma's norms fold as (1 + w); q/k norms after the projections switch the q/k pair off;
    Phi-4-mini's partial rotary (3/4 of head_dim 16) ties only the rotating dims."""
    model = tiny_model(arch_name)
    arch = arch_for(model)
    plan = plan_layer(decoder_layers(model, arch)[0], arch)
    assert (arch.norm_offset, plan.qk_pair, plan.rotary_dim) == (offset, qk_pair, rotary_dim)
    assert plan.qk_width == plan.head_dim - rotary_dim // 2 and plan.down_scale and plan.groups == 2
    T = Transform.identity(plan, device="cpu", shifts=True, qk=True)
    assert (T.qk_log_a is not None) == qk_pair and (T.attn_d, T.o_d, T.mlp_d) == (None, None, None)


def test_opt_with_gelu_gets_no_down_scale() -> None:
    """GELU is not positively homogeneous: fc2's input scale cannot fold into fc1's rows."""
    config = tiny_config("opt")
    config.activation_function = "gelu"
    model = AutoModelForCausalLM.from_config(config)
    layer = decoder_layers(model, arch_for(model))[0]
    plan = plan_layer(layer, arch_for(model))
    assert not plan.down_scale
    assert Transform.identity(plan, device="cpu", shifts=True, qk=True).down_log_s is None


# ------------------------------------------------------------------------------------------------
# Training signal


def _trainer(model, pruner: str, target: LayerTarget, **spec_kw):
    arch = arch_for(model)
    layer = decoder_layers(model, arch)[0]
    spec = InductionSpec(enabled=True, **spec_kw)
    batches = batches_for(model, arch)
    plan = plan_layer(layer, arch)
    params = {n: p.detach() for n, p in layer.named_parameters()}
    mbs = list(split_minibatches(batches, spec.batch_size))
    targets, stats = dense_pass(layer, plan, params, mbs, device=CPU, want_H=pruner == "sparsegpt")
    trainer = Trainer(layer, plan, params, stats, target, pruner, spec, 0.01, 16, CPU)
    return trainer, init_transform(plan, stats, spec, pruner, device=CPU), mbs, targets


@pytest.mark.parametrize("mask", ["ste", "soft"])
@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt"])
def test_gradient_reaches_the_scales_through_the_mask(pruner: str, mask: str) -> None:
    trainer, T, mbs, targets = _trainer(tiny_model("llama"), pruner, TARGETS["2:4"], mask=mask)
    T.requires_grad_(True)
    trainer.refresh(T)
    trainer.loss(T, *mbs[0].on(CPU), targets[0]).backward()
    for name in ("attn_log_s", "o_log_s", "mlp_log_s", "down_log_s"):
        grad = getattr(T, name).grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_query_key_pair_cannot_change_the_pruned_block() -> None:
    """Masks are chosen per output row, so the q/k row scales leave the pruned block unchanged."""
    trainer, T, mbs, targets = _trainer(tiny_model("llama"), "wanda", TARGETS["50%"])
    T2 = T.clone()
    assert T2.qk_log_a is not None
    T2.qk_log_a.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = trainer.loss(T, *mbs[0].on(CPU), targets[0]), trainer.loss(T2, *mbs[0].on(CPU), targets[0])
    assert float(a) == pytest.approx(float(b), rel=1e-6)


@pytest.mark.parametrize("target", [LayerTarget(0.5), LayerTarget(0.7), LayerTarget(0.5, 2, 4)])
def test_training_mask_is_the_pruners_mask_with_a_threshold_between(target: LayerTarget) -> None:
    """The hard mask is ``core.sparsity.mask_for``'s on the same scores, and the threshold lies
    between each comparison group's last pruned and first kept score."""
    L = torch.randn(24, 32, generator=torch.Generator().manual_seed(3))
    keep, thr = hard_and_threshold(L, target)
    assert torch.equal(keep, mask_for(L, target))
    # the guard's "hard" mode is the straight-through forward without its threshold
    hard = keep_mask(L, target, mode="hard", tau=0.05)
    assert torch.equal(hard, keep_mask(L, target, mode="ste", tau=0.05)) and torch.equal(hard, keep.float())
    groups = (24, -1) if target.m is None else (24, -1, target.m)
    Lg, kg, tg = L.reshape(groups), keep.reshape(groups), thr.reshape(groups)
    last_pruned = Lg.masked_fill(kg, float("-inf")).amax(dim=-1, keepdim=True)
    first_kept = Lg.masked_fill(~kg, float("inf")).amin(dim=-1, keepdim=True)
    assert bool((last_pruned < tg).all()) and bool((tg < first_kept).all())
    torch.testing.assert_close(tg, (0.5 * (last_pruned + first_kept)).expand_as(tg))


def test_training_moves_the_mask() -> None:
    trainer, T0, mbs, targets = _trainer(tiny_model("llama"), "wanda", TARGETS["2:4"], lr=0.1, epochs=2)
    T, losses = trainer.fit(T0, mbs, targets, torch.Generator().manual_seed(0))
    assert len(losses) == 2 * (len(mbs) - 1)  # every 8th minibatch is held out for the check
    before, after = trainer.pruned_params(T0), trainer.pruned_params(T)
    moved = sum(int(((before[k] != 0) != (after[k] != 0)).sum()) for k in before if k.endswith("weight"))
    assert moved > 0
    assert not torch.equal(T.attn_log_s, T0.attn_log_s)


# ------------------------------------------------------------------------------------------------
# End to end on one layer


@pytest.mark.parametrize("arch_name", ARCHES)
@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt", "wanda+swaps"])
def test_reported_loss_is_the_pruners_loss_after_folding(arch_name: str, pruner: str) -> None:
    """The loss induction reports for its folded transform is the loss of the folded layer pruned by
    prune_weight with the returned col_weights: for magnitude and Wanda the training mask is the
    pruner's mask (and Wanda's swaps refine it in the check as in the pruner); for SparseGPT the
    check runs the pruner itself."""
    pruner, _, refine = pruner.partition("+")
    rounds = 20 if refine else 0
    model = tiny_model(arch_name)
    arch = arch_for(model)
    layer = decoder_layers(model, arch)[0]
    batches = batches_for(model, arch)
    Y = run_layer(layer, batches, device="cpu")
    spec = InductionSpec(enabled=True, epochs=1, lr=0.1, batch_size=4, samples=0)  # (magnitude's default: 1)
    result = induce_layer(
        layer, arch, batches, device="cpu", target=TARGETS["50%"], pruner=pruner, spec=spec, blocksize=16,
        swap_rounds=rounds,
    )  # fmt: skip
    prune_layer(layer, arch, batches, pruner, TARGETS["50%"], result.col_weights, swap_rounds=rounds)
    check = [0]  # the check subset: every 8th minibatch; here batches == minibatches
    got = rel_mse([Y[i] for i in check], run_layer(layer, [batches[i] for i in check], device="cpu"))
    # SparseGPT: the Hessian of the folded layer's own forward differs from S^-1 H S^-1 by rounding
    assert got == pytest.approx(result.final_loss, rel=1e-3 if pruner != "sparsegpt" else 2e-2)


@pytest.mark.parametrize("target", ["50%", "2:4"])
@pytest.mark.parametrize("pruner", ["magnitude", "wanda"])
def test_induction_lowers_the_pruned_error(pruner: str, target: str) -> None:
    """On its calibration data. One minibatch, so the guard's check is that same data: a random
    tiny model has no structure for a learned importance to carry over to unseen tokens (on the
    real model it does: docs/induction.md)."""
    model = tiny_model("llama", hidden=64)
    arch = arch_for(model)
    layer = decoder_layers(model, arch)[1]
    batches = batches_for(model, arch, samples=8, bs=8)
    Y = run_layer(layer, batches, device="cpu")
    plain = copy.deepcopy(layer)
    prune_layer(plain, arch, batches, pruner, TARGETS[target])
    base = rel_mse(Y, run_layer(plain, batches, device="cpu"))
    spec = InductionSpec(enabled=True, epochs=2, lr=0.1, batch_size=8, samples=0)
    result = induce_layer(
        layer, arch, batches, device="cpu", target=TARGETS[target], pruner=pruner, spec=spec,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    prune_layer(layer, arch, batches, pruner, TARGETS[target], result.col_weights)
    induced = rel_mse(Y, run_layer(layer, batches, device="cpu"))
    assert induced < base
    if TARGETS[target].is_nm:
        assert all(nm_ok(lin.weight, 2, 4) for lin in layer_linears(layer, arch).values())


def test_reference_inputs_set_the_targets() -> None:
    """``reference`` (the dense model's inputs of the layer, targets "model"): training and the
    guard aim at the dense layer's output on them, returned per batch before the fold; the
    statistics the pruner reads stay those of the pruned inputs. With the pruned inputs
    themselves as reference, the result is the paper's targets' exactly."""
    model = tiny_model("llama")
    arch = arch_for(model)
    layer = decoder_layers(model, arch)[1]
    batches = batches_for(model, arch, samples=8, bs=4)
    spec = InductionSpec(enabled=True, epochs=1, lr=0.1, batch_size=2, samples=0)
    kw = dict(device="cpu", target=TARGETS["2:4"], pruner="magnitude", spec=spec)

    def induce(reference):
        fresh = copy.deepcopy(layer)
        r = induce_layer(
            fresh, arch, batches, generator=torch.Generator().manual_seed(0), reference=reference, **kw
        )
        return fresh, r

    _, plain = induce(None)
    assert plain.reference_outputs is None and plain.info["targets"] == "layer"
    _, same = induce(batches)
    assert same.info["targets"] == "model"
    assert same.losses == plain.losses and same.info["check_losses"] == plain.info["check_losses"]
    drift = torch.Generator().manual_seed(1)
    dense = [
        LayerBatch(b.hidden + 0.3 * torch.randn(b.hidden.shape, generator=drift), b.kwargs) for b in batches
    ]
    folded, other = induce(dense)
    expected = run_layer(layer, dense, device="cpu")  # the dense layer, before any fold
    assert len(other.reference_outputs) == len(dense)
    for got, want in zip(other.reference_outputs, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert other.losses != plain.losses  # other targets, other curve
    # its reported loss is the folded layer's, pruned with the returned importances, on the
    # check subset (minibatch 0: the first 2 sequences) against the reference's dense output
    prune_layer(folded, arch, batches, "magnitude", TARGETS["2:4"], other.col_weights)
    first = [LayerBatch(batches[0].hidden[:2], batches[0].kwargs)]
    got = rel_mse([expected[0][:2]], run_layer(folded, first, device="cpu"))
    assert got == pytest.approx(other.final_loss, rel=1e-3)


def test_samples_limit_what_induction_trains_and_guards_on() -> None:
    """``samples``: the first minibatches holding that many sequences train, guard and give the
    statistics; the dense model's outputs it hands on still cover every sequence."""
    model = tiny_model("llama")
    arch = arch_for(model)
    layer = decoder_layers(model, arch)[1]
    batches = batches_for(model, arch, samples=8, bs=4)

    def induce(samples: int):
        spec = InductionSpec(enabled=True, epochs=1, batch_size=2, samples=samples)
        return induce_layer(copy.deepcopy(layer), arch, batches, device="cpu", target=TARGETS["50%"],
                            pruner="magnitude", spec=spec, reference=batches)  # fmt: skip

    every, few = induce(0), induce(3)
    # 8 sequences / 2 = 4 minibatches, minibatch 0 held out: 3 steps; 3 sequences -> minibatches
    # of 2 and 1: 1 step
    assert len(every.losses) == 3 and len(few.losses) == 1
    assert [Y.shape[0] for Y in few.reference_outputs] == [4, 4]
    for a, b in zip(few.reference_outputs, every.reference_outputs, strict=True):
        torch.testing.assert_close(a, b)
    # the statistics differ (the init's start is read from 4 sequences instead of 8)
    assert few.info["check_losses"]["init"] != every.info["check_losses"]["init"]
    # the cut minibatch trains against its own sequences' targets: the same run as on the first
    # 3 sequences alone (reference included)
    first3 = [LayerBatch(batches[0].hidden[:3], cut_batch(batches[0].kwargs, 4, 0, 3))]
    spec = InductionSpec(enabled=True, epochs=1, batch_size=2, samples=0)
    alone = induce_layer(copy.deepcopy(layer), arch, first3, device="cpu", target=TARGETS["50%"],
                         pruner="magnitude", spec=spec, reference=first3)  # fmt: skip
    assert few.losses == pytest.approx(alone.losses, rel=1e-6)
    assert few.info["check_losses"] == pytest.approx(alone.info["check_losses"], rel=1e-6)


@pytest.mark.parametrize(
    ("pruner", "samples", "epochs"), [("magnitude", 3, 0), ("magnitude", 0, 1), ("wanda", 5, 1)]
)
def test_a_shared_dense_pass_gives_the_same_induction(pruner: str, samples: int, epochs: int) -> None:
    """``dense``: the walk's own dense forward over every batch, run with ``recorder_for``'s hooks
    (which read only the first ``samples`` sequences, across batches), stands in for induction's
    dense pass: the same statistics, targets, guard and folded layer, in float32."""
    from spruce.core.induction import recorder_for

    model = tiny_model("llama")
    arch = arch_for(model)
    layer = decoder_layers(model, arch)[1]
    batches = batches_for(model, arch, samples=8, bs=4)  # (sequences 0-2 and 0-4 cross no / one batch)
    spec = InductionSpec(enabled=True, epochs=epochs, batch_size=2, samples=samples)

    def induce(dense):
        fresh = copy.deepcopy(layer)
        r = induce_layer(fresh, arch, batches, device="cpu", target=TARGETS["50%"], pruner=pruner,
                         spec=spec, generator=torch.Generator().manual_seed(0), dense=dense)  # fmt: skip
        return fresh, r

    with recorder_for(layer, arch, spec, pruner) as recorder:
        outputs = run_layer(layer, batches, device="cpu")
    want_n = 32 * (samples or 8)
    assert {g: st.n for g, st in recorder.stats.items()} == dict.fromkeys(
        ("attn", "o", "mlp", "down"), want_n
    )
    assert recorder.seconds > 0
    (own_layer, own), (shared_layer, shared) = induce(None), induce((outputs, recorder))
    assert shared.info["chosen"] == own.info["chosen"]
    assert shared.info["check_losses"] == pytest.approx(own.info["check_losses"], rel=1e-5)
    assert shared.losses == pytest.approx(own.losses, rel=1e-4)
    for (name, a), b in zip(own_layer.state_dict().items(), shared_layer.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_a_shared_dense_pass_must_cover_what_induction_reads() -> None:
    """Statistics over other sequences than induction trains and checks on are refused."""
    from spruce.core.induction import recorder_for

    model = tiny_model("llama")
    arch = arch_for(model)
    layer = decoder_layers(model, arch)[0]
    batches = batches_for(model, arch, samples=8, bs=4)
    recorded = InductionSpec(enabled=True, samples=2)
    with recorder_for(layer, arch, recorded, "magnitude") as recorder:
        outputs = run_layer(layer, batches, device="cpu")
    kw = dict(device="cpu", target=TARGETS["50%"], dense=(outputs, recorder))
    with pytest.raises(ValueError, match="recorded statistics cover"):
        induce_layer(
            layer, arch, batches, pruner="magnitude", spec=InductionSpec(enabled=True, samples=3), **kw
        )
    # SparseGPT reads H, which a magnitude recorder does not gather
    with pytest.raises(ValueError, match="lack the Gram matrix"):
        induce_layer(
            layer, arch, batches, pruner="sparsegpt", spec=InductionSpec(enabled=True, samples=2), **kw
        )


def test_walk_outputs_are_cut_as_the_minibatches() -> None:
    """The walk's per-batch outputs cut as ``split_minibatches`` cuts its batches, then as
    ``first_sequences`` cut those: each minibatch gets its own sequences' outputs."""
    outputs = [torch.arange(4.0).reshape(4, 1, 1), torch.arange(4.0, 8.0).reshape(4, 1, 1)]
    batches = [LayerBatch(Y.clone(), {}) for Y in outputs]
    mbs = first_sequences(list(split_minibatches(batches, 2)), 5)  # 2 + 2 + 1 (cut) sequences
    got = targets_for(target_pieces(outputs, 2), mbs)
    assert [g.flatten().tolist() for g in got] == [[0, 1], [2, 3], [4]]
    assert all(torch.equal(g, mb.hidden) for g, mb in zip(got, mbs, strict=True))


@pytest.mark.engine
def test_magnitude_induction_shares_the_walks_dense_pass(tmp_path, monkeypatch) -> None:
    """Magnitude's walk runs the dense layer anyway (to measure its error): with the layer's own
    targets induction reads that pass and runs none of its own; with the dense model's targets,
    or before Wanda (whose statistics pass follows the fold), it still runs its own. In float32
    the shared pass gives the job induction's own pass would: the same choices, losses, layer
    errors."""
    import spruce.core.induction.train as train
    from spruce.core.compress import compress
    from tests.tiny import tiny_model_dir

    model = tiny_model_dir(tmp_path / "models", "llama", layers=2, hidden=64)
    calls: list[int] = []
    own = train.dense_pass

    def counting(*args, **kwargs):
        calls.append(1)
        return own(*args, **kwargs)

    monkeypatch.setattr(train, "dense_pass", counting)

    def run(pruner: str, compute: str = "bfloat16", **induction) -> dict:
        method = {"pruner": pruner, "swap_rounds": 0, "induction": {"enabled": True, **induction}}
        calls.clear()
        # (bfloat16: the walk's forwards as on bfloat16-native hardware, on every machine)
        job = tiny_job(model, 0.5, method, compute_dtype=compute)
        report = compress(job, out_dir=tmp_path / f"{pruner}{compute}{len(induction)}").to_dict()
        passes = {row["induction"]["info"]["dense_pass"] for row in report["layers"]}
        return {
            "own passes": len(calls),
            "layers": len(report["layers"]),
            "reported": passes,
            "report": report,
        }

    def counts(r: dict) -> dict:
        return {k: v for k, v in r.items() if k != "report"}

    assert counts(run("magnitude")) == {"own passes": 0, "layers": 2, "reported": {"walk"}}
    assert counts(run("magnitude", epochs=1, targets="model")) == {
        "own passes": 2,
        "layers": 2,
        "reported": {"own"},
    }
    assert counts(run("wanda")) == {"own passes": 2, "layers": 2, "reported": {"own"}}

    shared = run("magnitude", "model", samples=3)["report"]
    import spruce.core.induction as pkg

    with_shared = pkg.induce_layer
    monkeypatch.setattr(pkg, "induce_layer", lambda *a, **kw: with_shared(*a, **{**kw, "dense": None}))
    own_run = run("magnitude", "model", samples=3)
    assert counts(own_run) == {"own passes": 2, "layers": 2, "reported": {"own"}}
    for x, y in zip(shared["layers"], own_run["report"]["layers"], strict=True):
        assert x["induction"]["info"]["chosen"] == y["induction"]["info"]["chosen"]
        assert x["induction"]["info"]["check_losses"] == pytest.approx(
            y["induction"]["info"]["check_losses"], rel=1e-5
        )
        assert x["rel_error"] == pytest.approx(
            y["rel_error"], rel=1e-5
        )  # (the pruned layer against the dense)


def test_result_records_settings_curve_and_time() -> None:
    model = tiny_model("opt")
    arch = arch_for(model)
    layer = decoder_layers(model, arch)[0]
    spec = InductionSpec(enabled=True, epochs=2, batch_size=2)
    r = induce_layer(layer, arch, batches_for(model, arch), device="cpu", target=TARGETS["2:4"],
                     pruner="wanda", spec=spec)  # fmt: skip
    # 8 sequences / 2 per step = 4 minibatches, one held out for the check; 2 epochs
    assert len(r.losses) == 2 * 3 and all(x >= 0 for x in r.losses)
    assert r.seconds > 0
    # the guard folds the best of identity / init / trained on the check subset
    assert r.final_loss == pytest.approx(min(r.info["check_losses"].values()), abs=1e-8)
    assert r.final_loss <= r.init_loss
    assert set(r.col_weights) == set(arch.linears)
    assert sorted(r.info["shifts"]) == ["attn", "mlp", "o"]
    json.dumps(r.info)  # the report stores it as JSON


@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt"])
def test_zero_epochs_keeps_the_statistics_initialisation(pruner: str) -> None:
    """``epochs: 0``: no training step; the guard chooses between plain pruning and the
    statistics initialisation (no "trained" candidate, which would be the init itself)."""
    model = tiny_model("llama")
    arch = arch_for(model)
    layer = decoder_layers(model, arch)[0]
    spec = InductionSpec(enabled=True, epochs=0, batch_size=2)
    r = induce_layer(layer, arch, batches_for(model, arch), device="cpu", target=TARGETS["50%"],
                     pruner=pruner, spec=spec, blocksize=16)  # fmt: skip
    assert r.info["epochs"] == 0 and r.losses == []
    assert set(r.info["check_losses"]) == {"identity", "init"}
    assert r.info["chosen"] in ("identity", "init")
    assert r.final_loss <= r.info["check_losses"]["identity"]


def test_magnitude_col_weights_hold_only_the_per_linear_part() -> None:
    """Magnitude reads the folded weight, so the group scales need no col_weight; only the
    per-linear importance (not foldable) travels as col_weight."""
    model = tiny_model("llama")
    arch = arch_for(model)
    batches = batches_for(model, arch)
    for per_linear, expected in ((False, set()), (True, set(arch.linears))):
        layer = copy.deepcopy(decoder_layers(model, arch)[0])
        spec = InductionSpec(enabled=True, epochs=1, per_linear=per_linear)
        r = induce_layer(
            layer, arch, batches, device="cpu", target=TARGETS["50%"], pruner="magnitude", spec=spec
        )
        assert set(r.col_weights) == expected


def test_input_stats_centre_from_moments() -> None:
    X = torch.randn(100, 6, generator=torch.Generator().manual_seed(0)) + 3.0
    d = torch.randn(6)
    st = InputStats(
        n=100, sq_sum=X.square().sum(0), H=X.T @ X, sum=X.sum(0), abs_sum=X.abs().sum(0), sample=X.abs()
    )
    torch.testing.assert_close(st.centred_sq(d), (X - d).square().sum(0), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(st.centred_H(d), (X - d).T @ (X - d), rtol=1e-4, atol=1e-2)


# ------------------------------------------------------------------------------------------------
# Spec validation


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", -2), ("epochs", 101), ("lr", -1.0), ("mask", "foo"), ("batch_size", 0), ("reg", -0.5), ("temperature", 0.0),
     ("init", "bogus"), ("init_alpha", 9.0), ("targets", "sideways"), ("samples", 100_001), ("samples", -2)],
)  # fmt: skip
def test_spec_rejects_bad_induction_settings(field: str, value: object) -> None:
    body = {"model": "m", "sparsity": 0.5, "method": {"induction": True},
            "experimental": {"induction": {field: value}}}  # fmt: skip
    with pytest.raises(SpecError) as info:
        CompressionSpec.from_dict(body)
    assert info.value.param == f"experimental.induction.{field}"


# (pruner, sparsity, swap_rounds, epochs, why the scales are skipped or None where they train)
SKIPS = [
    ("sparsegpt", "2:4", -1, -1, "fit_to"),  # 2:4 fits the dense model
    ("sparsegpt", 0.5, -1, -1, "fit_to"),  # 50% fits the dense model too
    ("sparsegpt", 0.4, -1, -1, "unstructured"),  # 40% fits the layer: no training by default
    ("sparsegpt", 0.4, -1, 1, None),  # training asked for explicitly: it runs
    ("wanda", "2:4", -1, -1, "swaps"),  # swaps by default, and no training by default with them
    ("wanda", "2:4", 0, -1, None),  # the paper's Wanda: the scales train
    ("wanda", "2:4", -1, 1, None),  # training asked for explicitly: it runs, swaps or not
]


@pytest.mark.engine
@pytest.mark.parametrize(("pruner", "sparsity", "swap_rounds", "epochs", "why"), SKIPS)
def test_induction_scales_are_skipped_only_where_they_cannot_help(
    tmp_path, pruner: str, sparsity: object, swap_rounds: int, epochs: int, why: str | None
) -> None:
    from safetensors.torch import load_file

    from spruce.core.compress import compress
    from tests.tiny import tiny_model_dir

    model = tiny_model_dir(tmp_path / "models", "llama", layers=2, hidden=64)

    def run(induction: bool) -> tuple[dict, dict[str, torch.Tensor]]:
        # permute off: the channel permutation has its own tests (tests/unit/test_permute.py);
        # recovery off: it rescales every layer after pruning (tests/unit/test_recover.py)
        settings = {
            "enabled": induction,
            "batch_size": 2,
            "permute": False,
            "epochs": epochs,
            "recover_epochs": 0,
        }
        spec = tiny_job(
            model, sparsity, {"pruner": pruner, "swap_rounds": swap_rounds, "induction": settings}
        )
        out = tmp_path / f"{pruner}-{sparsity}-{swap_rounds}-{epochs}-{induction}".replace(":", "_")
        return compress(spec, out_dir=out).to_dict(), load_file(out / "hf" / "model.safetensors")

    report, induced = run(True)
    _, plain = run(False)
    unstructured_sparsegpt = pruner == "sparsegpt" and not isinstance(sparsity, str) and epochs == -1
    assert report["induction"]["epochs"] == (
        0 if why in ("swaps", "unstructured") or unstructured_sparsegpt else 1
    )
    if why is not None:  # skipped, and says so: the result is plain pruning's, bit for bit
        assert why in report["induction"]["scales_skipped"]
        assert all(row["induction"] is None and why in row["induction_skipped"] for row in report["layers"])
        assert all(torch.equal(induced[k], plain[k]) for k in plain)
    else:
        assert report["induction"]["scales_skipped"] is None and report["induction"]["targets"] == "model"
        assert all(row["induction"]["info"]["targets"] == "model" for row in report["layers"])
        assert all(row["induction"]["info"] and "induction_skipped" not in row for row in report["layers"])
        assert all(row["induction"]["info"]["epochs"] == 1 for row in report["layers"])
        if pruner == "wanda":  # (SparseGPT's guard may keep plain pruning: a tie is allowed)
            assert any(not torch.equal(induced[k], plain[k]) for k in plain)


@pytest.mark.engine
@pytest.mark.parametrize("pruner", ["magnitude", "wanda"])
def test_model_targets_differ_from_layer_targets_only_after_the_first_layer(tmp_path, pruner: str) -> None:
    """The first layer's inputs are the same in the dense and the pruned model, so both targets
    train it alike; from the second layer on, "model" aims at the dense model's activations,
    which the pruned first layer has drifted from. (The walk's forwards in float32: magnitude's
    "layer" targets come from the walk's own dense pass, in its precision, bfloat16 where native.)"""
    from spruce.core.compress import compress
    from tests.tiny import tiny_model_dir

    model = tiny_model_dir(tmp_path / "models", "llama", layers=2, hidden=64)

    def run(targets: str) -> dict:
        induction = {"enabled": True, "batch_size": 2, "targets": targets, "epochs": 1, "samples": 0}
        method = {"pruner": pruner, "swap_rounds": 0, "induction": induction}
        spec = tiny_job(model, 0.5, method, compute_dtype="model")
        return compress(spec, out_dir=tmp_path / targets).to_dict()

    model_rows, layer_rows = run("model"), run("layer")
    assert (model_rows["induction"]["targets"], layer_rows["induction"]["targets"]) == ("model", "layer")
    first, second = ([r["layers"][i]["induction"]["info"] for r in (model_rows, layer_rows)] for i in (0, 1))
    assert (first[0]["targets"], first[1]["targets"]) == ("model", "layer")
    assert first[0]["check_losses"] == first[1]["check_losses"]
    assert model_rows["layers"][0]["induction"]["losses"] == layer_rows["layers"][0]["induction"]["losses"]
    assert second[0]["check_losses"] != second[1]["check_losses"]
