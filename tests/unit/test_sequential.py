"""``method.sequential``: SparseGPT's fit to the dense model, pruning each layer's linears in turn
inside one forward (``walker.prune_in_forward``) or all from the dense layer's activations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from spruce.core.compress import compress
from spruce.core.spec import CompressionSpec
from tests.tiny import tiny_job, tiny_model_dir

pytestmark = [pytest.mark.unit, pytest.mark.engine]  # every test runs a whole compress


def _run(
    tmp_path: Path, arch: str, sparsity: Any, sequential: str, pruner: str = "sparsegpt", **method: Any
) -> tuple[dict, dict[str, torch.Tensor]]:
    model = tiny_model_dir(tmp_path / "models", arch, layers=2, hidden=64)
    spec = CompressionSpec.from_dict(
        {
            "model": str(model),
            "sparsity": sparsity,
            "method": {"pruner": pruner, "induction": False},
            "calibration": {"source": "pydoc", "samples": 6, "seq_len": 32, "seed": 1},
            "evaluation": {"sources": ["pydoc"]},
            "experimental": {
                "sequential": sequential,
                **method,
                "evaluation": {"seq_len": 32, "max_windows": 4},
                "batch_size": 4,  # two batches when the walk streams
            },
        }
    )
    tag = "-".join(f"{k}{v}" for k, v in method.items())
    out = tmp_path / f"{arch}-{pruner}-{sparsity}-{sequential}{tag}".replace(":", "_")
    return compress(spec, out_dir=out).to_dict(), load_file(out / "hf" / "model.safetensors")


NEW_FAMILIES = (("llama3", 0.7), ("qwen3", 0.7), ("gemma2", "2:4"), ("gemma3_text", 0.7), ("gemma3", "2:4"),
                ("phi3", "2:4"))  # fmt: skip
CASES = [
    # (method.sequential, pruner, sparsity); auto takes "linear" where SparseGPT fits the dense model
    *[
        pytest.param("auto", "sparsegpt", sp, arch, id=f"{arch}-sparsegpt-{sp}")
        for arch in ("llama", "qwen2", "opt")
        for sp in ("2:4", 0.7)
    ],
    *[pytest.param("auto", "sparsegpt", sp, arch, id=f"{arch}-sparsegpt-{sp}") for arch, sp in NEW_FAMILIES],
    pytest.param("linear", "sparsegpt", 0.4, "llama", id="llama-sparsegpt-0.4-fits-the-layer"),
    pytest.param("linear", "wanda", 0.5, "qwen2", id="qwen2-wanda-0.5"),
    pytest.param("linear", "wanda", "4:8", "opt", id="opt-wanda-4:8"),
]


@pytest.mark.parametrize(("sequential", "pruner", "sparsity", "arch"), CASES)
def test_linear_walk_prunes_in_turn_and_reports_it(
    tmp_path: Path, sequential: str, pruner: str, sparsity: Any, arch: str
) -> None:
    report, linear = _run(tmp_path, arch, sparsity, sequential, pruner)
    ref, layer = _run(tmp_path, arch, sparsity, "layer", pruner)

    assert report["sequential"] == "linear" and ref["sequential"] == "layer"
    fits_model = CompressionSpec.from_dict(report["spec"]).fits_dense_model
    # the layer's error is against the dense model where the walk carries it, else the dense layer
    assert all(row.get("error_vs") == ("dense model" if fits_model else None) for row in report["layers"])
    assert all("error_vs" not in row for row in ref["layers"])
    for rep in (report, ref):
        if isinstance(sparsity, str):
            assert rep["sparsity"]["nm_ok"] is True
        else:
            assert rep["sparsity"]["mean"] == pytest.approx(sparsity, abs=2e-3)
        assert all(0.0 < row["rel_error"] < 1.0 for row in rep["layers"])
        assert torch.isfinite(torch.tensor(rep["perplexity"]["sparse"]["pydoc"]))
    # Layer 0's first group reads the same inputs either way; o, the MLP and down then read what
    # the already pruned q/k/v (and o, gate/up) produce, so they differ.
    keys = {k for k in linear if ".layers.0." in k and k.endswith(".weight")}
    q = next(k for k in keys if "self_attn.q_proj" in k or "self_attn.qkv_proj" in k)  # Phi-3: fused
    down = next(k for k in keys if ("fc2" if arch == "opt" else "mlp.down_proj") in k)
    torch.testing.assert_close(linear[q], layer[q], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(linear[down], layer[down], atol=1e-4)


@pytest.mark.parametrize("sequential", ["linear", "layer"])
def test_fit_share_moves_the_writers_only(tmp_path: Path, sequential: str) -> None:
    """``method.fit_share`` scales the drift the writers (o, down) fit: layer 0's q/k/v read the
    dense model's own inputs and have no cross statistics, so they are identical at any share;
    the writers of layer 1 (whose inputs have drifted in either walk) move with the share. The
    default share is SparseGPT's (bit-identical to asking for it); the report keeps the asked value."""
    half, half_w = _run(tmp_path, "llama", "2:4", sequential, fit_share=0.5)
    whole, whole_w = _run(tmp_path, "llama", "2:4", sequential, fit_share=1.0)
    default, default_w = _run(tmp_path, "llama", "2:4", sequential)
    assert (
        half["spec"]["experimental"]["fit_share"] == 0.5
        and "fit_share" not in default["spec"]["experimental"]
    )
    assert half["plan"]["fit_weight"] == 0.5 and whole["plan"]["fit_weight"] == 1.0
    assert CompressionSpec.from_dict(default["spec"]).fit_weight == 0.5  # SparseGPT's default share
    assert half_w.keys() == default_w.keys() and all(torch.equal(half_w[k], default_w[k]) for k in half_w)
    for proj in ("q_proj", "k_proj", "v_proj"):
        name = f"model.layers.0.self_attn.{proj}.weight"
        torch.testing.assert_close(half_w[name], whole_w[name], atol=1e-6, rtol=1e-5)
    for name in ("model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        assert not torch.allclose(half_w[name], whole_w[name], atol=1e-4), name


def test_auto_streams_when_one_forward_would_not_fit(tmp_path: Path, monkeypatch) -> None:
    import spruce.core.compress as compress_module

    monkeypatch.setattr(compress_module, "IN_FORWARD_BYTES", 0)
    report, _ = _run(tmp_path, "llama", "2:4", "auto")
    assert report["sequential"] == "layer"
    assert "sequential" not in report["spec"]["experimental"]  # the preset's: auto
    assert report["plan"]["sequential"] == "linear_if_fits"


def test_other_pruners_and_the_dense_layer_fit_stream(tmp_path: Path) -> None:
    report, _ = _run(tmp_path, "llama", 0.4, "auto")  # SparseGPT below 50% fits the dense layer
    assert report["sequential"] == "layer"


def _wanda(tmp_path: Path, arch: str, sparsity: Any, swap_rounds: int) -> dict:
    model = tiny_model_dir(tmp_path / "models", arch, layers=2, hidden=64)
    spec = tiny_job(model, sparsity, {"pruner": "wanda", "swap_rounds": swap_rounds}, samples=6)
    return compress(spec).to_dict()


@pytest.mark.parametrize(
    ("arch", "sparsity"), [("llama", 0.5), ("qwen2", "2:4"), ("opt", 0.7), ("gemma2", "2:4"), ("phi3", 0.5)]
)
def test_wanda_swaps_walk_in_turn_and_report_what_they_gained(
    tmp_path: Path, arch: str, sparsity: Any
) -> None:
    refined = _wanda(tmp_path, arch, sparsity, -1)  # the default: 20 rounds
    plain = _wanda(tmp_path, arch, sparsity, 0)  # the paper's Wanda
    assert refined["sequential"] == "linear" and plain["sequential"] == "layer"
    assert "swap_rounds" not in refined["spec"]["experimental"] and refined["plan"]["swaps"] == 20
    for rep in (refined, plain):
        if isinstance(sparsity, str):
            assert rep["sparsity"]["nm_ok"] is True
        else:
            assert rep["sparsity"]["mean"] == pytest.approx(sparsity, abs=4e-3)  # round(0.7 * 64) / 64
    for row in refined["layers"]:
        # the dense pass of the walk in turn only measures the layer's error: reported apart
        assert row["measure_seconds"] > 0
        for entry in row["linears"].values():
            assert entry["swaps"] >= 0 and 0.0 <= entry["swap_gain"] < 1.0
    assert sum(e["swaps"] for row in refined["layers"] for e in row["linears"].values()) > 0
    assert all("swaps" not in e for row in plain["layers"] for e in row["linears"].values())
    # Each linear's error on its calibration inputs, against Wanda's own mask on the same statistics
    q = refined["layers"][0]["linears"][next(k for k in refined["layers"][0]["linears"] if "q_proj" in k)]
    assert q["swaps"] > 0 and q["swap_gain"] > 0.0 and q["rel_error"] > 0.0


def _wanda_fit(tmp_path: Path, arch: str, sparsity: Any, fit_to: str, sequential: str) -> tuple[dict, dict]:
    model = tiny_model_dir(tmp_path / "models", arch, layers=2, hidden=64)
    method = {"pruner": "wanda", "fit_to": fit_to, "sequential": sequential}
    spec = tiny_job(model, sparsity, method, samples=6, batch_size=4)
    out = tmp_path / f"{arch}-wanda-{sparsity}-{fit_to}-{sequential}".replace(":", "_")
    return compress(spec, out_dir=out).to_dict(), load_file(out / "hf" / "model.safetensors")


@pytest.mark.parametrize(("arch", "sparsity"), [("llama", "2:4"), ("opt", 0.7)])
@pytest.mark.parametrize("sequential", ["auto", "layer"])
def test_wanda_fits_the_dense_model_on_either_walk(
    tmp_path: Path, arch: str, sparsity: Any, sequential: str
) -> None:
    """``fit_to: model`` with Wanda: the writers' (o, down) masks are chosen against the dense
    model's outputs, on the walk in turn (the default with swaps) and on the layer walk (paired
    statistics)."""
    fit, fit_w = _wanda_fit(tmp_path, arch, sparsity, "model", sequential)
    ref, ref_w = _wanda_fit(tmp_path, arch, sparsity, "layer", sequential)
    assert fit["sequential"] == ("linear" if sequential == "auto" else "layer")
    assert fit["spec"]["experimental"]["fit_to"] == "model" and fit["plan"]["fits_dense_model"]
    if isinstance(sparsity, str):
        assert fit["sparsity"]["nm_ok"] is True
    else:
        assert fit["sparsity"]["mean"] == pytest.approx(sparsity, abs=4e-3)
    assert all(0.0 < row["rel_error"] < 1.0 for row in fit["layers"])
    if fit["sequential"] == "linear":
        assert all(row.get("error_vs") == "dense model" for row in fit["layers"])
        # fitted to the layer, the dense pass of the walk in turn only measures: reported apart
        assert all(row["measure_seconds"] > 0 and "error_vs" not in row for row in ref["layers"])
    keys = [k for k in fit_w if k.endswith(".weight") and ".layers." in k]
    # the second layer's writers see a drift between the pruned and the dense model's inputs
    writer = "fc2" if arch == "opt" else "down_proj"
    down1 = next(k for k in keys if ".layers.1." in k and writer in k)
    assert not torch.equal(fit_w[down1] != 0, ref_w[down1] != 0)
