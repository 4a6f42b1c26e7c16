"""Export: the Hugging Face folder and the compact sparse-bitmask artifact round-trip exactly."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, PreTrainedModel

from spruce.core.arch import arch_for, decoder_layers, layer_linears
from spruce.core.errors import UserError
from spruce.core.export import (
    bitmask_compress,
    bitmask_decompress,
    dense_bytes,
    folder_size,
    load_compact,
    load_compact_model,
    save_compact,
    save_hf,
    target_modules,
)
from tests.tiny import ARCHES, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.unit
log = logging.getLogger(__name__)


def _prune(model: PreTrainedModel, structure: str) -> PreTrainedModel:
    """Zero the smallest weights of every decoder linear: 50% per row, or N of every M along inputs."""
    arch = arch_for(model)
    with torch.no_grad():
        for layer in decoder_layers(model, arch):
            for lin in layer_linears(layer, arch).values():
                W = lin.weight  # [out, in]
                if structure == "unstructured":
                    drop = W.abs().topk(W.shape[1] // 2, dim=1, largest=False).indices  # [out, in/2]
                    W.scatter_(1, drop, 0.0)
                else:
                    n, m = (int(x) for x in structure.split(":"))
                    groups = W.view(W.shape[0], -1, m)  # [out, in/m, m]
                    drop = groups.abs().topk(m - n, dim=2, largest=False).indices
                    groups.scatter_(2, drop, 0.0)
    return model


def _logits(model: PreTrainedModel) -> torch.Tensor:
    ids = torch.arange(40).reshape(2, 20) % model.config.get_text_config().vocab_size
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("arch", ARCHES)
def test_save_hf_loads_with_identical_logits(tmp_path, arch):
    model = _prune(tiny_model(arch), "unstructured")
    size = save_hf(model, tiny_tokenizer(), tmp_path / "hf")
    assert size == folder_size(tmp_path / "hf") > dense_bytes(model)
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert torch.equal(_logits(loaded), _logits(model))
    W = loaded.get_submodule(f"{arch_for(loaded).layers}.0.{arch_for(loaded).q}").weight
    assert (W == 0).float().mean().item() == 0.5  # the zeros are in place


@pytest.mark.parametrize(
    ("arch", "structure"),
    [("llama", "unstructured"), ("qwen2", "2:4"), ("mistral", "2:4"), ("opt", "4:8"), ("phi3", "2:4"),
     ("gemma3", "unstructured"), ("qwen3", "2:4")],
)  # fmt: skip
def test_compact_round_trip_is_exact(tmp_path, arch, structure):
    model = _prune(tiny_model(arch), structure)
    save_compact(model, arch_for(model), tmp_path / "compact", structure=structure)
    restored = load_compact(tmp_path / "compact")
    expected = model.state_dict()
    assert restored.keys() == expected.keys()  # tied lm_head (qwen2, opt) comes back under its name
    for name, tensor in expected.items():
        assert torch.equal(restored[name], tensor), name
    # and the restored weights give the same model
    clone = tiny_model(arch, seed=1)
    clone.load_state_dict(restored)
    assert torch.equal(_logits(clone), _logits(model))


@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_compact_is_smaller_than_hf(tmp_path, structure):
    model = _prune(tiny_model("llama", hidden=256), structure)
    hf = save_hf(model, tiny_tokenizer(), tmp_path / "hf")
    compact = save_compact(model, arch_for(model), tmp_path / "compact", structure=structure)
    log.info("llama hidden 256, %s: compact %d B / HF %d B = %.3f", structure, compact, hf, compact / hf)
    assert compact < 0.75 * hf  # half the linear weights gone, one bit per weight added


def test_config_records_sparse_bitmask(tmp_path):
    model = _prune(tiny_model("llama", layers=3), "2:4")
    arch = arch_for(model)
    save_compact(model, arch, tmp_path / "c", structure="2:4", tokenizer=tiny_tokenizer())
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["model_type"] == "spruce_compact"
    assert config["base_config"]["model_type"] == "llama"
    sc = config["sparsity_config"]
    assert sc["format"] == "sparse-bitmask"
    assert sc["sparsity_structure"] == "2:4"
    assert sc["global_sparsity"] == pytest.approx(0.5)
    assert len(sc["targets"]) == 3 * 7
    assert set(sc["targets"]) == target_modules(model, arch)
    assert "model.layers.2.mlp.down_proj" in sc["targets"]
    assert (tmp_path / "c" / "tokenizer.json").is_file()


def test_only_decoder_linears_are_compressed(tmp_path):
    model = _prune(tiny_model("llama"), "unstructured")
    save_compact(model, arch_for(model), tmp_path / "c", structure="unstructured")
    with safe_open(str(tmp_path / "c" / "model.sparse.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.self_attn.q_proj.bitmask" in keys
    assert "model.layers.0.self_attn.q_proj.weight" not in keys
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= keys
    assert "model.layers.1.input_layernorm.weight" in keys


def test_bitmask_tensor_layout():
    W = torch.tensor([[1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0], [0.0] * 8 + [4.0]])  # [2, 9]
    packed = bitmask_compress(W)
    assert packed["shape"].tolist() == [2, 9]
    assert packed["compressed"].tolist() == [1.0, 2.0, 3.0, 4.0]  # row-major non-zeros
    assert packed["bitmask"].tolist() == [[0b00001001, 0b1], [0, 0b1]]  # little-endian bits
    assert packed["row_offsets"].tolist() == [0, 3]
    assert torch.equal(bitmask_decompress(packed["compressed"], packed["bitmask"], packed["shape"]), W)


def test_bitmask_keeps_dtype():
    W = torch.randn(8, 16).to(torch.bfloat16)
    W[W.abs() < 0.5] = 0
    packed = bitmask_compress(W)
    assert packed["compressed"].dtype == torch.bfloat16
    assert torch.equal(bitmask_decompress(packed["compressed"], packed["bitmask"], packed["shape"]), W)


def test_load_compact_rejects_a_plain_folder(tmp_path):
    model = tiny_model("llama")
    save_hf(model, tiny_tokenizer(), tmp_path / "hf")
    with pytest.raises(UserError, match="not a Spruce compact artifact"):
        load_compact(tmp_path / "hf")


@pytest.mark.parametrize(("arch", "structure"), [("llama", "2:4"), ("qwen2", "unstructured")])
def test_plain_transformers_refuses_the_compact_folder_and_spruce_reads_it(tmp_path, arch, structure):
    """No loader may take the compact folder for a model with random weights; Spruce's reader
    rebuilds exactly the model the hf/ folder holds."""
    model = _prune(tiny_model(arch), structure)
    save_hf(model, tiny_tokenizer(), tmp_path / "hf")
    save_compact(
        model, arch_for(model), tmp_path / "compact", structure=structure, tokenizer=tiny_tokenizer()
    )
    with pytest.raises(ValueError, match="spruce_compact"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "compact")
    rebuilt = load_compact_model(tmp_path / "compact")
    served = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert torch.equal(_logits(rebuilt), _logits(served))


def test_sizes(tmp_path):
    model = tiny_model("qwen2")  # tied embeddings count once
    n = sum(p.numel() for p in model.parameters())
    assert dense_bytes(model) == 4 * n
    assert dense_bytes(model.to(torch.bfloat16)) == 2 * n
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"1234")
    (tmp_path / "a" / "sub").mkdir()
    (tmp_path / "a" / "sub" / "y.bin").write_bytes(b"123456")
    assert folder_size(tmp_path / "a") == 10
    assert folder_size(tmp_path / "a" / "x.bin") == 4
