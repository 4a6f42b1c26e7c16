"""Source dtype end to end: "auto" keeps a bfloat16 checkpoint bfloat16 in memory and in hf/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from spruce.core.compress import compress
from spruce.core.export import folder_size
from spruce.core.models import load_model
from tests.tiny import tiny_job, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.unit


def bf16_dir(root: Path, *, layers: int = 2, hidden: int = 64) -> Path:
    """A tiny Llama saved in bfloat16 (config dtype and safetensors both)."""
    out = root / f"tiny-llama-bf16-{layers}x{hidden}"
    tiny_model("llama", layers=layers, hidden=hidden).to(torch.bfloat16).save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


def _weights_dtypes(folder: Path) -> set[torch.dtype]:
    found: set[torch.dtype] = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            found |= {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    return found


def test_auto_keeps_the_checkpoint_dtype(tmp_path):
    folder = bf16_dir(tmp_path)
    loaded = load_model(str(folder))  # dtype "auto" by default
    assert loaded.meta["dtype"] == "bfloat16"
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())
    assert load_model(str(folder), dtype="float32").meta["dtype"] == "float32"


@pytest.mark.engine
def test_a_bfloat16_model_comes_out_bfloat16_at_its_size(tmp_path):
    folder = bf16_dir(tmp_path)
    report = compress(tiny_job(folder, 0.5, {"pruner": "wanda"}), out_dir=tmp_path / "out")
    data = report.to_dict()
    assert data["model"]["dtype"] == "bfloat16" and data["dtype_out"] == "bfloat16"
    hf = tmp_path / "out" / "hf"
    weights_in = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    weights_out = sum(f.stat().st_size for f in hf.glob("*.safetensors"))
    assert _weights_dtypes(hf) == {torch.bfloat16}
    assert abs(weights_out - weights_in) < 0.05 * weights_in  # not twice: no float32 copy
    assert data["sizes"]["hf_bytes"] < 1.5 * folder_size(folder)  # the whole folder, tokenizer included
    assert json.loads((hf / "config.json").read_text()).get("dtype", "bfloat16") == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(hf)
    assert next(model.parameters()).dtype == torch.bfloat16
    q = model.model.layers[0].self_attn.q_proj.weight
    assert 0.45 <= float((q == 0).float().mean()) <= 0.55  # the pruned weights, kept in bfloat16
    ids = torch.randint(0, 100, (1, 16))
    assert torch.isfinite(model(ids).logits.float()).all()
