"""Model loading: folders, typed errors for bad refs, the smollm2 alias cache (without the download)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, MixtralConfig, Qwen3MoeConfig

import spruce.core.builtins as builtins
import spruce.core.models as models
from spruce.core.arch import REGISTRY
from spruce.core.builtins import Builtin
from spruce.core.errors import ModelNotFound, SystemFault, UnsupportedArchitecture
from spruce.core.models import load_model, resolve_cache_dir
from tests.tiny import ARCHES, tiny_config, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ARCHES)
def test_a_tiny_folder_loads_with_arch_and_meta(tiny_dirs, name):
    loaded = load_model(str(tiny_dirs[name]))
    model_type = "llama" if name == "llama3" else name
    assert loaded.meta["source"] == "folder" and loaded.meta["model_type"] == model_type
    assert loaded.arch is REGISTRY[model_type]
    assert not loaded.model.training
    assert loaded.meta["layers"] == 2 and loaded.meta["dtype"] == "float32"
    assert loaded.meta["params"] == sum(p.numel() for p in loaded.model.parameters())
    assert loaded.meta["resolved"] == str(tiny_dirs[name].resolve())
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in loaded.model.parameters())
    assert loaded.tokenizer("def f(x): return x")["input_ids"]
    torch.testing.assert_close(loaded.model.state_dict(), tiny_model(name).state_dict())


def test_the_dtype_asked_for_is_the_dtype_loaded(tiny_dirs):
    loaded = load_model(str(tiny_dirs["llama"]), dtype=torch.bfloat16)
    assert loaded.meta["dtype"] == "bfloat16"
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())


@pytest.mark.parametrize("ref", ["/no/such/folder", "./missing-model", "weights/model.gguf"])
def test_a_missing_path_is_model_not_found(ref):
    with pytest.raises(ModelNotFound, match="no such folder") as err:
        load_model(ref)
    assert ref in err.value.message


def test_a_folder_without_config_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound, match=r"no config\.json"):
        load_model(str(tmp_path))


def test_a_file_that_is_not_gguf_is_model_not_found(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0")
    with pytest.raises(ModelNotFound, match=r"not a \.gguf"):
        load_model(str(path))


def test_an_unsupported_model_type_names_the_supported_ones(tmp_path):
    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitecture, match="'gpt2' is not supported") as err:
        load_model(str(tmp_path))
    assert "llama" in err.value.message and "opt" in err.value.message


def test_a_model_type_unknown_to_transformers_is_unsupported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "spruce-imaginary"}))
    with pytest.raises(UnsupportedArchitecture, match=r"supported: gemma2, .*llama"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("config", [MixtralConfig(num_local_experts=4), Qwen3MoeConfig(num_experts=4)])
def test_a_mixture_of_experts_is_refused_by_name(tmp_path, config):
    config.save_pretrained(tmp_path)  # no weights: refused from config.json alone
    with pytest.raises(UnsupportedArchitecture, match=r"mixture-of-experts \(MoE\)") as err:
        load_model(str(tmp_path))
    assert config.model_type in err.value.message and "qwen3" in err.value.message


def test_post_layer_norm_opt_is_refused_before_the_weights_are_read(tmp_path):
    config = tiny_config("opt")
    config.do_layer_norm_before = False
    config.save_pretrained(tmp_path)  # no weights at all: the refusal must come first
    with pytest.raises(UnsupportedArchitecture, match="post-layer-norm"):
        load_model(str(tmp_path))


def test_an_unreachable_hub_fails_at_once_and_says_so(monkeypatch):
    monkeypatch.setattr(models, "_in_hub_cache", lambda repo_id: False)
    monkeypatch.setattr(models, "_hub_reachable", lambda endpoint: False)
    started = time.perf_counter()
    with pytest.raises(ModelNotFound, match="cannot be reached") as err:
        load_model("spruce-tests/no-such-model")
    assert "spruce-tests/no-such-model" in err.value.message
    assert time.perf_counter() - started < 5  # no half-minute of retries


def test_offline_mode_is_named_in_the_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(models, "_in_hub_cache", lambda repo_id: False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFound, match="HF_HUB_OFFLINE"):
        load_model("spruce-tests/no-such-model")


def test_an_invalid_hub_id_is_model_not_found():
    with pytest.raises(ModelNotFound, match="not a valid hub id"):
        load_model("not a -- valid id!")


def test_hub_probe_of_a_closed_port_is_false():
    assert models._hub_reachable("http://127.0.0.1:1") is False


def test_resolve_cache_dir_prefers_argument_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPRUCE_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("SPRUCE_CACHE_DIR")
    assert resolve_cache_dir() == Path.home() / ".cache" / "spruce"


def test_gguf_quantization_config_is_dropped_and_weights_kept(tmp_path):
    quantized = tiny_model("qwen2")
    quantized.config.quantization_config = {"quant_method": "gguf"}
    fresh = models._without_quantization_config(quantized, dtype=torch.float32)
    assert getattr(fresh.config, "quantization_config", None) is None
    assert fresh.get_output_embeddings().weight is fresh.get_input_embeddings().weight  # ties survive
    for name, tensor in quantized.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor)
    fresh.save_pretrained(tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()


def _fake_smollm2(monkeypatch, shape: dict[str, int]) -> list[Path]:
    """Replace the download and the GGUF dequantization by a tiny model; count the fetches."""
    fetched: list[Path] = []

    def fetch(builtin: Builtin, dest: Path) -> Path:
        fetched.append(dest)
        return dest / "fake.gguf"

    monkeypatch.setattr(models, "fetch_gguf", fetch)
    monkeypatch.setattr(models, "load_gguf", lambda path, dtype: (tiny_model("llama"), tiny_tokenizer()))
    monkeypatch.setitem(builtins.BUILTINS, "smollm2-135m", dataclasses.replace(builtins.SMOLLM2, shape=shape))
    return fetched


def test_the_alias_is_converted_once_and_then_read_from_the_cache(monkeypatch, tmp_path):
    fetched = _fake_smollm2(monkeypatch, {"num_hidden_layers": 2, "hidden_size": 64})
    first = load_model("smollm2-135m", cache_dir=tmp_path)
    second = load_model("smollm2-135m", cache_dir=tmp_path)
    assert len(fetched) == 1
    assert first.meta["source"] == second.meta["source"] == "alias"
    assert second.meta["resolved"] == str(tmp_path / "models" / "smollm2-135m")
    torch.testing.assert_close(second.model.state_dict(), tiny_model("llama").state_dict())
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [".smollm2-135m.lock", "smollm2-135m"]


def test_a_failed_conversion_leaves_no_folder_behind(monkeypatch, tmp_path):
    _fake_smollm2(monkeypatch, {"num_hidden_layers": 30, "hidden_size": 576})  # the tiny model mismatches
    with pytest.raises(SystemFault, match="unexpected model"):
        load_model("smollm2-135m", cache_dir=tmp_path)
    assert [p.name for p in (tmp_path / "models").iterdir()] == [".smollm2-135m.lock"]
