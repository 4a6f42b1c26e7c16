"""The layer walker on every family's tiny model: exactness, statistics, hooks, cancellation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spruce.core.arch import arch_for, decoder_layers, input_groups, layer_linears
from spruce.core.errors import Cancelled
from spruce.core.evaluate import output_head
from spruce.core.passes import _SENSITIVITY_EVERY, collect_paired_stats, collect_stats, prune_in_forward
from spruce.core.stats import InputStats
from spruce.core.walker import LayerBatch, capture_inputs, run_layer, walk
from tests.tiny import ARCHES, VOCAB, tiny_model

pytestmark = pytest.mark.unit

SIZES = (3, 3, 2)  # the last batch has a different size
SEQ = 16


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (sum(SIZES), SEQ), generator=torch.Generator().manual_seed(seed))


def _reference(model: nn.Module, arch, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input of the final norm, logits) from one plain forward of the whole model."""
    seen: list[torch.Tensor] = []
    norm = output_head(model, arch)[0]
    handle = norm.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            logits = model(ids).logits
    finally:
        handle.remove()
    return seen[0], logits


def _head(model: nn.Module, arch, hidden: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        for module in output_head(model, arch):
            hidden = module(hidden)
    return hidden


@pytest.mark.parametrize("name", ARCHES)
def test_walk_without_visitor_reproduces_the_full_model(name):
    model = tiny_model(name)
    arch = arch_for(model)
    ids = _ids()
    final = walk(
        model,
        arch,
        capture_inputs(model, arch, ids.split(list(SIZES)), device="cpu"),
        device="cpu",
        visit=None,
    )

    assert [b.hidden.shape[0] for b in final] == list(SIZES)
    hidden = torch.cat([b.hidden for b in final])  # [b, seq, hidden]
    want_hidden, want_logits = _reference(model, arch, ids)
    torch.testing.assert_close(hidden, want_hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_head(model, arch, hidden), want_logits, atol=1e-5, rtol=1e-5)


def test_per_layer_kwargs_follow_sliding_window_layers():
    # Qwen2 with sliding-window layers gives layer 1 a different mask than layer 0.
    torch.manual_seed(0)
    config = tiny_model("qwen2").config
    config.use_sliding_window, config.sliding_window, config.max_window_layers = True, 4, 1
    config.layer_types = ["full_attention", "sliding_attention"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config).eval()
    arch = arch_for(model)
    ids = _ids(1)
    batches = capture_inputs(model, arch, ids.split(list(SIZES)), device="cpu")
    assert len(batches[0].layer_kwargs) == 2
    final = walk(model, arch, batches, device="cpu", visit=None)
    _, want_logits = _reference(model, arch, ids)
    got = _head(model, arch, torch.cat([b.hidden for b in final]))
    torch.testing.assert_close(got, want_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gemma2", "gemma3_text", "gemma3"])
def test_gemma_sliding_and_global_layers_each_get_their_own_mask_and_rotary(name):
    # Layer 0 slides (window 8 < SEQ), layer 1 is global; Gemma 3 also rotates them differently.
    model = tiny_model(name)
    arch = arch_for(model)
    batches = capture_inputs(model, arch, _ids(2).split(list(SIZES)), device="cpu")
    sliding, full = batches[0].layer_kwargs
    assert batches[0].kwargs is sliding
    assert not torch.equal(_dense_mask(sliding["attention_mask"]), _dense_mask(full["attention_mask"]))
    cos_s, cos_f = sliding["position_embeddings"][0], full["position_embeddings"][0]
    assert torch.equal(cos_s, cos_f) == (name == "gemma2")
    # replaying layer 0's arguments for layer 1 would change layer 1's output
    layer = decoder_layers(model, arch)[1]
    right = run_layer(layer, [batches[0].advance(batches[0].hidden, 1)], device="cpu")[0]
    wrong = run_layer(layer, [LayerBatch(hidden=batches[0].hidden, kwargs=sliding)], device="cpu")[0]
    assert not torch.allclose(right, wrong, atol=1e-4)


def _dense_mask(mask) -> torch.Tensor:
    """A captured attention mask as a [.., q, k] tensor whatever its form (None: plain causal)."""
    if mask is None:
        return torch.ones(SEQ, SEQ).tril().bool()
    return (mask == 0) if mask.dtype != torch.bool else mask


def test_capture_records_the_first_layer_inputs_and_restores_the_layers():
    model = tiny_model("llama")
    arch = arch_for(model)
    layers = list(decoder_layers(model, arch))
    ids = _ids()
    batches = capture_inputs(model, arch, ids.split(list(SIZES)), device="cpu")

    assert list(decoder_layers(model, arch)) == layers
    with torch.no_grad():
        embedded = model.get_input_embeddings()(ids)
    torch.testing.assert_close(torch.cat([b.hidden for b in batches]), embedded)
    cos, sin = batches[0].kwargs["position_embeddings"]
    assert cos.shape[-2] == SEQ and sin.shape == cos.shape
    assert batches[0].layer_kwargs == ()  # every layer gets the same mask and positions


def test_capture_restores_the_layers_when_the_forward_raises():
    model = tiny_model("opt")
    arch = arch_for(model)
    layers = list(decoder_layers(model, arch))
    with pytest.raises(IndexError):
        capture_inputs(model, arch, [torch.full((1, 4), VOCAB + 5)], device="cpu")  # ids out of range
    assert list(decoder_layers(model, arch)) == layers


def _inputs_without_hooks(layer: nn.Module, arch, batches: list[LayerBatch]) -> dict[str, torch.Tensor]:
    """Every linear's input, recorded by swapping each linear for a recording wrapper (no hooks)."""

    class Record(nn.Module):
        def __init__(self, inner: nn.Linear, sink: list[torch.Tensor]) -> None:
            super().__init__()
            self.inner, self.sink = inner, sink

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.sink.append(x.reshape(-1, x.shape[-1]))
            return self.inner(x)

    seen: dict[str, list[torch.Tensor]] = {path: [] for path in arch.linears}
    originals = layer_linears(layer, arch)
    for path, linear in originals.items():
        parent, _, attr = path.rpartition(".")
        setattr(layer.get_submodule(parent), attr, Record(linear, seen[path]))
    try:
        run_layer(layer, batches, device="cpu")
    finally:
        for path, linear in originals.items():
            parent, _, attr = path.rpartition(".")
            setattr(layer.get_submodule(parent), attr, linear)
    return {path: torch.cat(rows) for path, rows in seen.items()}


def _first_layer(name: str) -> tuple:
    """(arch, calibration batches of the first layer, the first layer) of a tiny ``name`` model."""
    model = tiny_model(name)
    arch = arch_for(model)
    batches = capture_inputs(model, arch, _ids().split(list(SIZES)), device="cpu")
    return arch, batches, decoder_layers(model, arch)[0]


@pytest.mark.parametrize("name", ARCHES)
def test_collect_stats_matches_statistics_computed_by_hand(name):
    arch, batches, layer = _first_layer(name)

    stats, outputs = collect_stats(layer, arch, batches, device="cpu", want_hessian=True)

    inputs = _inputs_without_hooks(layer, arch, batches)
    for path, X in inputs.items():
        want = InputStats.new(X.shape[1], device="cpu", want_hessian=True)
        want.update(X)
        assert stats[path].n == want.n == sum(SIZES) * SEQ
        torch.testing.assert_close(stats[path].sq_sum, want.sq_sum, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats[path].H, want.H, rtol=1e-5, atol=1e-4)
    for group in input_groups(arch):
        assert all(stats[path] is stats[group[0]] for path in group)
    assert stats[arch.q] is not stats[arch.o] and stats[arch.o] is not stats[arch.mlp_out]
    for got, want in zip(outputs, run_layer(layer, batches, device="cpu"), strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("name", ARCHES)
def test_paired_stats_pair_each_token_with_its_dense_input(name):
    arch, batches, layer = _first_layer(name)
    g = torch.Generator().manual_seed(5)
    dense = [b.hidden + 0.1 * torch.randn(b.hidden.shape, generator=g) for b in batches]

    stats, outputs, dense_out = collect_paired_stats(layer, arch, batches, dense, device="cpu")

    dense_batches = [LayerBatch(h, b.kwargs, b.layer_kwargs) for h, b in zip(dense, batches, strict=True)]
    X = _inputs_without_hooks(layer, arch, batches)
    X_d = _inputs_without_hooks(layer, arch, dense_batches)
    for group in input_groups(arch):
        path = group[0]
        writer = path in (arch.o, arch.mlp_out)  # only the residual writers get cross statistics
        W = layer.get_submodule(path).weight.detach()  # [out, in]
        want = InputStats.new(
            X[path].shape[1], device="cpu", want_hessian=True, cross_out=W.shape[0] if writer else None
        )
        want.update(X[path], (X_d[path] - X[path]) @ W.T if writer else None)
        assert stats[path].n == want.n
        torch.testing.assert_close(stats[path].H, want.H, rtol=1e-5, atol=1e-4)
        if writer:
            torch.testing.assert_close(stats[path].G, want.G, rtol=1e-4, atol=1e-3)
            assert float(stats[path].G.abs().max()) > 0  # the streams differ, so the cross term does
        else:
            assert stats[path].G is None
    assert _hook_count(layer) == 0
    for got, want_out in zip(outputs, run_layer(layer, batches, device="cpu"), strict=True):
        torch.testing.assert_close(got, want_out, atol=0, rtol=0)
    for got, want_out in zip(dense_out, run_layer(layer, dense_batches, device="cpu"), strict=True):
        torch.testing.assert_close(got, want_out, atol=0, rtol=0)


def _hook_count(layer: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._forward_hooks_with_kwargs)
        for m in layer.modules()
    )


def test_collect_stats_removes_its_hooks_when_the_forward_raises(monkeypatch):
    model = tiny_model("llama")
    arch = arch_for(model)
    batches = capture_inputs(model, arch, _ids().split(list(SIZES)), device="cpu")
    layer = decoder_layers(model, arch)[0]
    dense = run_layer(layer, batches, device="cpu")
    down = layer.get_submodule(arch.mlp_out)

    def boom(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("down_proj failed")

    monkeypatch.setattr(down, "forward", boom)
    with pytest.raises(RuntimeError, match="down_proj failed"):
        collect_stats(layer, arch, batches, device="cpu", want_hessian=False)
    monkeypatch.undo()

    assert _hook_count(layer) == 0
    stats, _ = collect_stats(layer, arch, batches, device="cpu", want_hessian=False)
    again = run_layer(layer, batches, device="cpu")  # a later forward: unaffected, feeds no stats
    assert stats[arch.q].n == sum(SIZES) * SEQ
    assert _hook_count(layer) == 0
    for got, want in zip(again, dense, strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def _spy_moves(monkeypatch, layers: nn.ModuleList) -> list[tuple[int, str]]:
    moves: list[tuple[int, str]] = []
    for i, layer in enumerate(layers):
        real = layer.to

        def to(device, *, _i=i, _real=real):
            moves.append((_i, str(device)))
            return _real(device)

        monkeypatch.setattr(layer, "to", to)
    return moves


def test_walk_raises_cancelled_between_layers_and_leaves_layers_home(monkeypatch):
    model = tiny_model("llama", layers=3)
    arch = arch_for(model)
    layers = decoder_layers(model, arch)
    moves = _spy_moves(monkeypatch, layers)
    visited: list[int] = []
    reported: list[tuple[int, int]] = []
    checks = iter([False, False, True])

    with pytest.raises(Cancelled, match="before layer 3 of 3"):
        walk(
            model,
            arch,
            capture_inputs(model, arch, _ids().split(list(SIZES)), device="cpu"),
            device="cpu",
            visit=lambda i, layer, batches: visited.append(i),
            should_stop=lambda: next(checks),
            on_layer=lambda i, n: reported.append((i, n)),
        )
    assert visited == [0, 1]
    assert reported == [(1, 3), (2, 3)]
    # each visited layer went to the device and back before the next one moved: one at a time
    assert moves == [(0, "cpu"), (0, "cpu"), (1, "cpu"), (1, "cpu")]
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_walk_moves_the_layer_back_when_the_visitor_raises(monkeypatch):
    model = tiny_model("opt")
    arch = arch_for(model)
    moves = _spy_moves(monkeypatch, decoder_layers(model, arch))

    def visit(i: int, layer: nn.Module, batches: list[LayerBatch]) -> None:
        raise ValueError("visitor failed")

    with pytest.raises(ValueError, match="visitor failed"):
        walk(model, arch, capture_inputs(model, arch, [_ids()], device="cpu"), device="cpu", visit=visit)
    assert moves == [(0, "cpu"), (0, "cpu")]


def test_visitor_changes_propagate_to_later_layers():
    model = tiny_model("llama")
    arch = arch_for(model)
    ids = _ids()
    _, dense_logits = _reference(model, arch, ids)

    def zero_down(i: int, layer: nn.Module, batches: list[LayerBatch]) -> None:
        with torch.no_grad():
            layer.get_submodule(arch.mlp_out).weight.zero_()

    final = walk(
        model,
        arch,
        capture_inputs(model, arch, ids.split(list(SIZES)), device="cpu"),
        device="cpu",
        visit=zero_down,
    )
    _, want = _reference(model, arch, ids)  # the model as changed in place by the visitor
    got = _head(model, arch, torch.cat([b.hidden for b in final]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, dense_logits, atol=1e-3)


def _mlp_in_outputs(layer: nn.Module, arch, batches: list[LayerBatch]) -> dict[str, torch.Tensor]:
    """[tokens, out] outputs of the MLP's input linears, computed from inputs recorded without hooks."""
    X = _inputs_without_hooks(layer, arch, batches)
    return {path: layer.get_submodule(path)(X[path]).detach() for path in arch.mlp_in}


@pytest.mark.parametrize("name", ARCHES)
def test_mlp_sensitivity_is_the_derivative_of_the_hidden_activation(name):
    """Llama/Qwen2: h = silu(gate) * up, so dh/dup = silu(gate) and dh/dgate = silu'(gate) up
    (Gemma: GeLU-tanh in place of silu); OPT: h = relu(fc1), so dh/dfc1 = 1 where fc1 > 0.
    Closed forms, not autograd."""
    arch, batches, layer = _first_layer(name)
    sens: dict = {}
    _, outputs = collect_stats(layer, arch, batches, device="cpu", want_hessian=False, sensitivity=sens)

    Z = _mlp_in_outputs(layer, arch, batches)
    if arch.gated and name.startswith("gemma"):  # gelu_tanh(g) = g/2 (1 + tanh(k (g + c g^3)))
        g, u = Z[arch.mlp_in[0]], Z[arch.mlp_in[-1]]
        k, c = (2 / torch.pi) ** 0.5, 0.044715
        t = torch.tanh(k * (g + c * g**3))
        act, dact = 0.5 * g * (1 + t), 0.5 * (1 + t) + 0.5 * g * (1 - t**2) * k * (1 + 3 * c * g**2)
        want = {arch.mlp_in[0]: dact * u, arch.mlp_in[-1]: act}
    elif arch.gated:
        g, u = Z[arch.mlp_in[0]], Z[arch.mlp_in[-1]]
        sig = torch.sigmoid(g)
        want = {arch.mlp_in[0]: sig * (1 + g * (1 - sig)) * u, arch.mlp_in[-1]: g * sig}
    else:
        want = {arch.mlp_in[0]: (Z[arch.mlp_in[0]] > 0).to(torch.float32)}
    assert set(sens) == set(arch.mlp_in)
    every = _SENSITIVITY_EVERY  # tokens read: every n-th of each batch (each batch a multiple of n)
    assert all(size * SEQ % every == 0 for size in SIZES) and every > 1
    for path, d in want.items():
        assert sens[path].n == sum(SIZES) * SEQ // every
        torch.testing.assert_close(sens[path].sq_sum, d[::every].square().sum(dim=0), rtol=1e-4, atol=1e-4)
    assert _hook_count(layer) == 0
    for got, want_out in zip(outputs, run_layer(layer, batches, device="cpu"), strict=True):
        torch.testing.assert_close(got, want_out, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["llama", "opt"])
def test_paired_sensitivity_comes_from_the_pruned_stream_only(name):
    arch, batches, layer = _first_layer(name)
    g = torch.Generator().manual_seed(5)
    dense = [b.hidden + 0.5 * torch.randn(b.hidden.shape, generator=g) for b in batches]
    paired: dict = {}
    collect_paired_stats(layer, arch, batches, dense, device="cpu", sensitivity=paired)
    alone: dict = {}
    collect_stats(layer, arch, batches, device="cpu", want_hessian=False, sensitivity=alone)
    for path in arch.mlp_in:
        assert paired[path].n == alone[path].n
        torch.testing.assert_close(paired[path].sq_sum, alone[path].sq_sum, rtol=1e-5, atol=1e-5)
    assert _hook_count(layer) == 0


def test_an_mlp_of_another_form_fails_loudly_and_leaves_no_hooks(monkeypatch):
    from spruce.core.errors import SystemFault

    arch, batches, layer = _first_layer("llama")
    mlp = layer.mlp

    def doubled(x: torch.Tensor) -> torch.Tensor:  # not act(gate) * up: the row weights would lie
        return mlp.down_proj(2.0 * mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))

    monkeypatch.setattr(mlp, "forward", doubled)
    with pytest.raises(SystemFault, match="not the expected"):
        collect_stats(layer, arch, batches, device="cpu", want_hessian=False, sensitivity={})
    assert _hook_count(layer) == 0


def _one_batch(name: str, noise: float = 0.1) -> tuple:
    """(arch, every calibration token of the first layer in one batch, the dense model's input of
    the same tokens (perturbed), the first layer) of a tiny ``name`` model."""
    model = tiny_model(name)
    arch = arch_for(model)
    (batch,) = capture_inputs(model, arch, [_ids()], device="cpu")
    g = torch.Generator().manual_seed(5)
    dense = batch.hidden + noise * torch.randn(batch.hidden.shape, generator=g)
    return arch, batch, dense, decoder_layers(model, arch)[0]


@pytest.mark.parametrize("name", ARCHES)
def test_in_forward_without_pruning_equals_the_paired_statistics(name):
    """With a ``prune`` that changes nothing, each group sees exactly what collect_paired_stats
    measures (Hessian, and the writers' cross statistics), in forward order, and both outputs
    are the plain forwards'."""
    arch, batch, dense, layer = _one_batch(name)
    want, want_out, want_dense = collect_paired_stats(layer, arch, [batch], [dense], device="cpu")
    seen: list[tuple[tuple[str, ...], InputStats]] = []

    out, dense_out = prune_in_forward(
        layer,
        arch,
        batch,
        dense,
        device="cpu",
        prune=lambda group, st: seen.append((group, st)),
        fit_reference=True,
    )

    assert [group for group, _ in seen] == list(input_groups(arch))
    for group, st in seen:
        ref = want[group[0]]
        assert st.n == ref.n == sum(SIZES) * SEQ
        torch.testing.assert_close(st.H, ref.H, rtol=1e-5, atol=1e-4)
        if ref.G is None:
            assert st.G is None
        else:
            torch.testing.assert_close(st.G, ref.G, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out, want_out[0], atol=0, rtol=0)
    torch.testing.assert_close(dense_out, want_dense[0], atol=0, rtol=0)
    assert _hook_count(layer) == 0


@pytest.mark.parametrize("name", ARCHES)
def test_in_forward_without_a_dense_fit_equals_collect_stats(name):
    """Wanda's walk: the reference is the batch itself, norms only, no cross statistics."""
    arch, batch, _, layer = _one_batch(name)
    want, want_out = collect_stats(layer, arch, [batch], device="cpu", want_hessian=False)
    seen: list[tuple[tuple[str, ...], InputStats]] = []

    out, ref_out = prune_in_forward(
        layer, arch, batch, batch.hidden, device="cpu", prune=lambda group, st: seen.append((group, st)),
        fit_reference=False, want_hessian=False,
    )  # fmt: skip

    assert [group for group, _ in seen] == list(input_groups(arch))
    for group, st in seen:
        assert st.H is None and st.G is None and st.n == want[group[0]].n
        torch.testing.assert_close(st.sq_sum, want[group[0]].sq_sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, want_out[0], atol=0, rtol=0)
    torch.testing.assert_close(ref_out, want_out[0], atol=0, rtol=0)
    assert _hook_count(layer) == 0


@pytest.mark.parametrize("name", ["llama", "opt"])
def test_in_forward_fits_each_group_on_what_the_pruned_groups_before_it_produce(name):
    """Halving q/k/v/gate/up... as they are reached: o's and down's statistics are those of the
    layer whose earlier groups are already changed, and the output is the changed layer's."""
    arch, batch, dense, layer = _one_batch(name)
    linears = layer_linears(layer, arch)
    seen: dict[str, InputStats] = {}

    def prune(group: tuple[str, ...], st: InputStats) -> None:
        seen[group[0]] = st
        for path in group:
            linears[path].weight.data.mul_(0.5)

    out, _ = prune_in_forward(layer, arch, batch, dense, device="cpu", prune=prune, fit_reference=True)

    X = _inputs_without_hooks(layer, arch, [batch])  # every group is halved by now
    for path in (arch.o, arch.mlp_out):
        # the writer itself was halved after its statistics were taken: its input is unaffected
        torch.testing.assert_close(seen[path].H, X[path].T @ X[path], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out, run_layer(layer, [batch], device="cpu")[0], atol=1e-6, rtol=1e-5)
    assert _hook_count(layer) == 0


def test_in_forward_measures_the_sensitivity_on_the_dense_model():
    arch, batch, dense, layer = _one_batch("llama", noise=0.5)
    sens: dict = {}
    prune_in_forward(
        layer,
        arch,
        batch,
        dense,
        device="cpu",
        prune=lambda g, st: None,
        fit_reference=True,
        sensitivity=sens,
    )
    on_dense: dict = {}
    dense_batch = [LayerBatch(dense, batch.kwargs)]
    collect_stats(layer, arch, dense_batch, device="cpu", want_hessian=False, sensitivity=on_dense)
    for path in arch.mlp_in:
        assert sens[path].n == on_dense[path].n == sum(SIZES) * SEQ // _SENSITIVITY_EVERY
        torch.testing.assert_close(sens[path].sq_sum, on_dense[path].sq_sum, rtol=1e-5, atol=1e-5)
    assert _hook_count(layer) == 0


def test_in_forward_removes_its_hooks_when_prune_raises():
    arch, batch, dense, layer = _one_batch("qwen2")
    before = run_layer(layer, [batch], device="cpu")[0]

    def prune(group: tuple[str, ...], st: InputStats) -> None:
        if group[0] == arch.o:
            raise RuntimeError("o failed")

    with pytest.raises(RuntimeError, match="o failed"):
        prune_in_forward(
            layer, arch, batch, dense, device="cpu", prune=prune, fit_reference=False, sensitivity={}
        )
    assert _hook_count(layer) == 0
    torch.testing.assert_close(run_layer(layer, [batch], device="cpu")[0], before, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["llama", "opt"])
def test_in_forward_reorders_the_input_of_a_group_whose_permutation_prune_folded(name):
    """A ``prune`` that permutes down's inputs (and gate/up's or fc1's rows) and returns the
    permutation: the forward goes on with the reordered input, so nothing changes."""
    arch, batch, dense, layer = _one_batch(name)
    want = run_layer(layer, [batch], device="cpu")[0]
    linears = layer_linears(layer, arch)
    p = torch.randperm(linears[arch.mlp_out].in_features, generator=torch.Generator().manual_seed(2))

    def prune(group: tuple[str, ...], st: InputStats) -> torch.Tensor | None:
        if group[0] != arch.mlp_out:
            return None
        down = linears[arch.mlp_out]
        down.weight.data = down.weight.data[:, p].contiguous()
        for path in arch.mlp_in:
            lin = linears[path]
            lin.weight.data = lin.weight.data[p].contiguous()
            if lin.bias is not None:
                lin.bias.data = lin.bias.data[p].contiguous()
        return p

    out, _ = prune_in_forward(layer, arch, batch, dense, device="cpu", prune=prune, fit_reference=True)

    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)  # the permuted layer, same function
    torch.testing.assert_close(run_layer(layer, [batch], device="cpu")[0], want, atol=1e-5, rtol=1e-5)
    assert _hook_count(layer) == 0
