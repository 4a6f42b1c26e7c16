"""The model card: Hub metadata a loader and the Hub read, and the figures from the report."""

from __future__ import annotations

import json

import pytest
import yaml

from spruce.core.card import REPORT_NAME, base_model, model_card, write_card

REPORT = {
    "spec": {
        "model": "smollm2-135m",
        "sparsity": "2:4",
        "method": {"pruner": "sparsegpt", "preset": "default"},
    },
    "plan": {"preset": "default", "pruner": "sparsegpt", "fit_share": 0.5},
    "model": {"ref": "smollm2-135m", "source": "alias", "dtype": "float32"},
    "calibration": {"source": "pydoc", "samples": 32, "seq_len": 512, "seed": 0},
    "perplexity": {"dense": {"pydoc": 12.33, "fortunes": 20.5}, "sparse": {"pydoc": 19.17, "fortunes": 31.0}},
    "sparsity": {"mean": 0.5, "min": 0.5, "max": 0.5, "nm_ok": True},
    "allocation": {"method": "uniform"},
    "induction": {"epochs": 1},
    "sizes": {"hf_bytes": 538_000_000},
    "versions": {"spruce": "0.1.0", "torch": "2.13.0"},
}


def _header(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_header_names_the_base_model_library_and_method():
    meta = _header(model_card(REPORT))
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["library_name"] == "transformers"
    assert {"sparse", "sparsegpt", "sparsity-2-4", "sparsity-induction"} <= set(meta["tags"])


def test_the_body_has_the_figures_and_the_plan():
    card = model_card(REPORT)
    assert "| pydoc | 12.33 | 19.17 |" in card and "| fortunes | 20.50 | 31.00 |" in card
    assert "every N:M group obeys" in card
    plan = json.loads(card.split("```json\n")[1].split("```")[0])
    assert plan == REPORT["plan"]


def test_hub_refs_are_their_own_base_and_local_folders_have_none():
    assert base_model({"ref": "Qwen/Qwen3-0.6B", "source": "hub"}) == "Qwen/Qwen3-0.6B"
    assert base_model({"ref": "/models/mine", "source": "folder"}) == ""
    assert "base_model" not in _header(model_card({**REPORT, "model": {"ref": "/m", "source": "folder"}}))


def test_the_card_and_the_report_land_in_the_folder(tmp_path):
    write_card(REPORT, tmp_path)
    assert json.loads((tmp_path / REPORT_NAME).read_text()) == REPORT
    assert (tmp_path / "README.md").read_text().startswith("---\n")


@pytest.mark.engine
def test_a_compress_run_leaves_its_card_in_hf(tmp_path):
    from transformers import AutoModelForCausalLM

    from spruce.core.compress import compress
    from tests.tiny import tiny_job, tiny_model_dir

    spec = tiny_job(tiny_model_dir(tmp_path, "llama"), "2:4", {"pruner": "wanda"})
    report = compress(spec, out_dir=tmp_path / "out").to_dict()
    hf = tmp_path / "out" / "hf"
    card = (hf / "README.md").read_text()
    assert _header(card)["library_name"] == "transformers" and "sparsity-2-4" in _header(card)["tags"]
    assert json.loads((hf / REPORT_NAME).read_text())["plan"] == json.loads(json.dumps(report["plan"]))
    AutoModelForCausalLM.from_pretrained(hf)  # the card and report beside the weights change nothing
