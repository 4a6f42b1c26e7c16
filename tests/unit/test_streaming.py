"""Streaming walks: layers read from the shards when reached, written out and freed after."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from transformers import AutoModelForCausalLM

from spruce.core.arch import arch_for, decoder_layers, layer_linears
from spruce.core.models import load_model
from spruce.core.streaming import LayerStream, ShardReader, ShardWriter, empty_model
from spruce.core.walker import capture_inputs, walk
from tests.tiny import VOCAB, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.unit


def _prune_half(i, layer, batches):
    """A stand-in pruner: zero each linear's smaller half of |w| (deterministic, data-free)."""
    arch = arch_for_layer[0]
    for lin in layer_linears(layer, arch).values():
        W = lin.weight.data
        cut = W.abs().flatten().kthvalue(W.numel() // 2).values
        W[W.abs() <= cut] = 0
    return None


arch_for_layer: list = []


def _folder(tmp_path, arch, dtype):
    out = tmp_path / f"{arch}-in"
    tiny_model(arch, layers=3).to(dtype).save_pretrained(out, max_shard_size="20KB")  # several shards
    tiny_tokenizer().save_pretrained(out)
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma2", "phi3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_streamed_walk_writes_what_the_in_memory_walk_computes(tmp_path, arch, dtype):
    folder = _folder(tmp_path, arch, dtype)
    ids = [torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(s)) for s in range(2)]

    loaded = load_model(str(folder))
    arch_for_layer[:] = [loaded.arch]
    want = walk(loaded.model, loaded.arch, capture_inputs(loaded.model, loaded.arch, ids, device="cpu"),
                device="cpu", visit=_prune_half)  # fmt: skip

    reader = ShardReader(folder)
    model = empty_model(folder, reader)
    spec = arch_for(model)
    assert next(model.parameters()).dtype == dtype
    assert all(p.is_meta for p in decoder_layers(model, spec).parameters())
    writer = ShardWriter(tmp_path / "out")
    got = walk(model, spec, capture_inputs(model, spec, ids, device="cpu"), device="cpu", visit=_prune_half,
               layers=LayerStream(model, spec, reader, writer))  # fmt: skip
    assert all(p.is_meta for p in decoder_layers(model, spec).parameters())  # every layer freed
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(a.hidden, b.hidden, rtol=0, atol=0)
    writer.finish(model, spec, loaded.tokenizer)

    out = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert next(out.parameters()).dtype == dtype
    torch.testing.assert_close(out.state_dict(), loaded.model.state_dict(), rtol=0, atol=0)


def test_a_streamed_walk_frees_each_layer_after_its_outputs_are_seen(tmp_path):
    """Nothing keeps a released layer's tensors alive (not the writer, the walker or a hook), and
    ``on_outputs`` (a checkpoint's save) still sees the layer loaded."""
    folder = _folder(tmp_path, "llama", torch.bfloat16)
    reader = ShardReader(folder)
    model = empty_model(folder, reader)
    spec = arch_for(model)
    arch_for_layer[:] = [spec]
    loaded: list[weakref.ref] = []
    seen: list[bool] = []

    class Watched(LayerStream):
        def load(self, i, layer, weights=None):
            super().load(i, layer, weights)
            loaded.extend(weakref.ref(p) for p in layer.parameters())

    def on_outputs(i, outputs):
        seen.append(not any(p.is_meta for p in decoder_layers(model, spec)[i].parameters()))

    ids = [torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))]
    walk(model, spec, capture_inputs(model, spec, ids, device="cpu"), device="cpu", visit=_prune_half,
         on_outputs=on_outputs, layers=Watched(model, spec, reader, ShardWriter(tmp_path / "out")))  # fmt: skip
    gc.collect()
    assert seen == [True, True, True]
    assert len(loaded) > 0 and [r for r in loaded if r() is not None] == []
