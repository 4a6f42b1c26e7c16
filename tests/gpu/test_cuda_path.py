"""The engine on a CUDA device gives the CPU's result within a tolerance: the walker's layer
inputs and outputs, the three pruners, induction, and the exported folder (``benchmarks/gpu_check.sh``).

Every test is skipped, with the reason, where ``torch.cuda.is_available()`` is False; CI has no GPU.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from spruce.core.compress import compress
from tests.tiny import tiny_job, tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device: torch.cuda.is_available() is False"
    ),
]


@pytest.fixture(autouse=True)
def _no_tf32():
    """TF32 would make CUDA matmuls differ from the CPU's far beyond float32 rounding; restored
    after each test."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _run(model_dir, device: str, sparsity: object, settings: dict, out):
    spec = tiny_job(model_dir, sparsity, settings, batch_size=4)
    report = compress(spec, device=device, out_dir=out).to_dict()
    return report, load_file(out / "hf" / "model.safetensors")


def _decoder_linears(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in weights.items() if ".layers." in k and k.endswith("proj.weight")}


def test_walker_layer_inputs_and_outputs_match_cpu():
    from spruce.core.arch import arch_for, decoder_layers
    from spruce.core.walker import capture_inputs, run_layer

    model = tiny_model("llama").eval()
    arch = arch_for(model)
    ids = [torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))]
    layer = decoder_layers(model, arch)[0]
    cpu_batches = capture_inputs(model, arch, ids, device="cpu")
    cpu_out = run_layer(layer, cpu_batches, device="cpu")
    gpu_batches = capture_inputs(model, arch, ids, device="cuda")
    layer.to("cuda")
    gpu_out = run_layer(layer, gpu_batches, device="cuda")
    assert torch.allclose(gpu_batches[0].hidden.cpu(), cpu_batches[0].hidden, atol=1e-5)
    assert torch.allclose(gpu_out[0].cpu(), cpu_out[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("pruner", "sparsity"),
    [("magnitude", 0.5), ("wanda", 0.5), ("wanda", "2:4"), ("sparsegpt", 0.5), ("sparsegpt", "2:4")],
)
def test_pruners_on_cuda_match_cpu(tmp_path, tiny_dirs, pruner, sparsity):
    settings = {"pruner": pruner}
    cpu, w_cpu = _run(tiny_dirs["llama"], "cpu", sparsity, settings, tmp_path / "cpu")
    gpu, w_gpu = _run(tiny_dirs["llama"], "cuda", sparsity, settings, tmp_path / "cuda")
    assert gpu["sparsity"] == pytest.approx(cpu["sparsity"], abs=1e-6)
    for name, W in _decoder_linears(w_cpu).items():
        G = w_gpu[name]
        agree = float(((W != 0) == (G != 0)).float().mean())
        assert agree >= 0.99, f"{name}: masks agree on {agree:.3f} only"  # ties may fall either way
        diff = float((G - W).norm() / W.norm())
        assert diff <= 0.05, f"{name}: weights differ by {diff:.3f} of their norm"
    for row_c, row_g in zip(cpu["layers"], gpu["layers"], strict=True):
        assert row_g["rel_error"] == pytest.approx(row_c["rel_error"], rel=0.05, abs=1e-4)


@pytest.mark.parametrize(("pruner", "sparsity"), [("wanda", "2:4"), ("sparsegpt", "2:4"), ("sparsegpt", 0.7)])
def test_induction_on_cuda_matches_cpu(tmp_path, tiny_dirs, pruner, sparsity):
    settings = {"pruner": pruner, "induction": {"enabled": True, "epochs": 1}}
    cpu, _ = _run(tiny_dirs["llama"], "cpu", sparsity, settings, tmp_path / "cpu")
    gpu, _ = _run(tiny_dirs["llama"], "cuda", sparsity, settings, tmp_path / "cuda")
    assert gpu["sparsity"] == pytest.approx(cpu["sparsity"], abs=1e-6)
    # training sums in another order on a GPU: the same result up to a few percent of the error
    for row_c, row_g in zip(cpu["layers"], gpu["layers"], strict=True):
        assert row_g["rel_error"] == pytest.approx(row_c["rel_error"], rel=0.10, abs=1e-3)


def test_export_from_cuda_reloads_with_transformers(tmp_path, tiny_dirs):
    from transformers import AutoModelForCausalLM

    _run(tiny_dirs["llama"], "cpu", "2:4", {"pruner": "sparsegpt"}, tmp_path / "cpu")
    _, w_gpu = _run(tiny_dirs["llama"], "cuda", "2:4", {"pruner": "sparsegpt"}, tmp_path / "cuda")
    assert all(t.device.type == "cpu" for t in w_gpu.values())
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "cuda" / "hf").eval()
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "cpu" / "hf").eval()
    with torch.no_grad():
        assert torch.allclose(logits, ref(ids).logits, rtol=1e-2, atol=1e-2)
