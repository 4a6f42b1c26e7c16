"""``options.compute_dtype``: the walk's forwards in bfloat16 (``core.precision.forward_precision``), with
the residual writers, every statistic and every pruning step still exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from spruce.core import precision
from spruce.core.arch import arch_for, decoder_layers
from spruce.core.compress import compress
from spruce.core.passes import collect_stats
from spruce.core.precision import ForwardPrecision, forward_precision, resolve_precision
from spruce.core.spec import CompressionSpec
from spruce.core.walker import capture_inputs, run_layer
from tests.tiny import ARCHES, VOCAB, tiny_model, tiny_model_dir

pytestmark = pytest.mark.unit

SIZES = (3, 2)
SEQ = 16


def _first_layer(name: str) -> tuple:
    model = tiny_model(name)
    arch = arch_for(model)
    ids = torch.randint(0, VOCAB, (sum(SIZES), SEQ), generator=torch.Generator().manual_seed(0))
    return (
        arch,
        capture_inputs(model, arch, ids.split(list(SIZES)), device="cpu"),
        decoder_layers(model, arch)[0],
    )


def _bf16(arch: Any) -> ForwardPrecision:
    return ForwardPrecision(torch.bfloat16, exact=(arch.o, arch.mlp_out))


def _wrapped(layer: torch.nn.Module, arch: Any) -> list[str]:
    """The exact linears whose ``forward`` is still shadowed by an instance attribute."""
    return [p for p in (arch.o, arch.mlp_out) if "forward" in vars(layer.get_submodule(p))]


@pytest.mark.parametrize("name", ARCHES)
def test_bfloat16_forwards_lower_the_products_and_nothing_else(name):
    arch, batches, layer = _first_layer(name)
    full = run_layer(layer, batches, device="cpu")
    full_stats, _ = collect_stats(layer, arch, batches, device="cpu", want_hessian=True)
    seen: dict[str, torch.dtype] = {}
    handles = [
        layer.get_submodule(p).register_forward_hook(lambda m, a, out, p=p: seen.__setitem__(p, out.dtype))
        for p in (arch.q, arch.o, arch.mlp_out)
    ]
    try:
        with forward_precision(_bf16(arch)):
            stats, low = collect_stats(layer, arch, batches, device="cpu", want_hessian=True)
    finally:
        for h in handles:
            h.remove()

    # q computes in bfloat16; the residual writers in float32, so the layer's output stays float32
    assert seen == {arch.q: torch.bfloat16, arch.o: torch.float32, arch.mlp_out: torch.float32}
    for f, lo in zip(full, low, strict=True):
        assert lo.dtype == torch.float32
        rel = float((f - lo).norm() / f.norm())
        assert 0 < rel < 2e-2, rel  # rounded, not exact, and close
    # The hooks ran with autocast off: the q/k/v group's input (the norm's output) does not
    # depend on any lowered product, so its float32 statistics are bit-identical; o's input
    # (attention's output) carries the rounding.
    assert torch.equal(stats[arch.q].H, full_stats[arch.q].H)
    assert stats[arch.o].H.dtype == torch.float32
    assert not torch.equal(stats[arch.o].H, full_stats[arch.o].H)
    assert _wrapped(layer, arch) == [] and not torch.is_autocast_enabled("cpu")
    # outside the block the forward is the exact one again
    for f, again in zip(full, run_layer(layer, batches, device="cpu"), strict=True):
        assert torch.equal(f, again)


def test_a_failing_forward_leaves_no_wrapped_linear_and_no_autocast(monkeypatch):
    arch, batches, layer = _first_layer("llama")

    def boom(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("gate failed")

    monkeypatch.setattr(layer.get_submodule(arch.mlp_in[0]), "forward", boom)
    with forward_precision(_bf16(arch)), pytest.raises(RuntimeError, match="gate failed"):
        run_layer(layer, batches, device="cpu")
    assert _wrapped(layer, arch) == [] and not torch.is_autocast_enabled("cpu")


def test_an_exact_linear_keeps_a_forward_of_its_own(monkeypatch):
    arch, batches, layer = _first_layer("llama")
    down = layer.get_submodule(arch.mlp_out)
    plain = down.forward
    seen: list[torch.dtype] = []

    def counting(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.dtype)
        return plain(x)

    monkeypatch.setattr(down, "forward", counting)
    with forward_precision(_bf16(arch)):
        run_layer(layer, batches, device="cpu")
    assert seen == [torch.float32] * len(batches)  # its input cast back before its own forward ran
    assert vars(down)["forward"] is counting


@pytest.mark.parametrize(
    ("compute_dtype", "model_dtype", "native", "fits", "want"),
    [
        ("auto", torch.float32, True, True, torch.bfloat16),
        ("auto", torch.float32, True, False, torch.bfloat16),
        ("auto", torch.float32, False, True, None),  # emulated bfloat16 is slower than float32
        ("bfloat16", torch.float32, False, False, torch.bfloat16),  # asked for explicitly
        ("model", torch.float32, True, True, None),
        ("auto", torch.bfloat16, True, True, None),  # already low precision: the model's own dtype
    ],
)
def test_compute_dtype_resolves_by_setting_model_and_hardware(
    monkeypatch, compute_dtype, model_dtype, native, fits, want
):
    monkeypatch.setattr(precision, "bf16_native", lambda device: native)
    arch = arch_for(tiny_model("opt"))
    got = resolve_precision(
        compute_dtype, model_dtype=model_dtype, device=torch.device("cpu"), arch=arch, fits_dense_model=fits
    )
    if want is None:
        assert got is None
    else:  # the residual writers stay exact where SparseGPT fits the dense model
        assert got == ForwardPrecision(want, exact=(arch.o, arch.mlp_out) if fits else ())


def _run(
    tmp_path: Path, pruner: str, sparsity: Any, compute_dtype: str
) -> tuple[dict, dict[str, torch.Tensor]]:
    model = tiny_model_dir(tmp_path / "models", "llama", layers=2, hidden=64)
    spec = CompressionSpec.from_dict(
        {
            "model": str(model),
            "sparsity": sparsity,
            "method": {"pruner": pruner, "induction": False},
            "calibration": {"source": "pydoc", "samples": 6, "seq_len": 32, "seed": 1},
            "evaluation": {"sources": ["pydoc"]},
            "experimental": {
                "evaluation": {"seq_len": 32, "max_windows": 4},
                "batch_size": 4,
                "compute_dtype": compute_dtype,
            },
        }
    )
    out = tmp_path / f"{pruner}-{sparsity}-{compute_dtype}".replace(":", "_")
    return compress(spec, out_dir=out).to_dict(), load_file(out / "hf" / "model.safetensors")


@pytest.mark.engine
@pytest.mark.parametrize(("pruner", "sparsity"), [("sparsegpt", "2:4"), ("wanda", 0.5), ("sparsegpt", 0.7)])
def test_a_bfloat16_walk_prunes_exactly_and_close_to_the_float32_one(tmp_path, pruner, sparsity):
    low, low_w = _run(tmp_path, pruner, sparsity, "bfloat16")
    full, full_w = _run(tmp_path, pruner, sparsity, "model")

    assert low["compute_dtype"] == "bfloat16" and full["compute_dtype"] == "float32"
    assert low["spec"]["experimental"]["compute_dtype"] == "bfloat16" == low["plan"]["compute_dtype"]
    sp = low["sparsity"]
    assert sp["nm_ok"] is (True if ":" in str(sparsity) else None)
    assert abs(sp["overall"] - full["sparsity"]["overall"]) < 1e-9  # the same exact count
    names = [k for k in low_w if k.endswith("proj.weight") and ".layers." in k]
    assert names and all(low_w[k].dtype == torch.float32 for k in names)
    assert any(not torch.equal(low_w[k], full_w[k]) for k in names)  # the statistics did change
    ppl, low_ppl = full["perplexity"]["sparse"]["pydoc"], low["perplexity"]["sparse"]["pydoc"]
    assert abs(low_ppl / ppl - 1) < 0.05, (low_ppl, ppl)


def test_induction_trains_in_the_walks_precision_and_checks_in_float32():
    """Induction's training steps only steer the masks: they take the walk's bfloat16; the dense
    targets, the statistics and the guard's comparison of candidates stay float32."""
    from spruce.core.induction import induce_layer
    from spruce.core.sparsity import LayerTarget
    from spruce.core.spec import InductionSpec

    arch, batches, layer = _first_layer("llama")
    seen: list[torch.dtype] = []
    handle = layer.get_submodule(arch.q).register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    spec = InductionSpec(enabled=True, epochs=1, batch_size=1, permute=False)
    try:
        with forward_precision(ForwardPrecision(torch.bfloat16)):
            result = induce_layer(
                layer, arch, batches, device="cpu", target=LayerTarget(0.5), pruner="wanda", spec=spec
            )
    finally:
        handle.remove()
    steps = len(result.losses)
    assert steps > 0 and seen.count(torch.bfloat16) == steps  # one lowered forward per training step
    assert seen.count(torch.float32) >= 2  # the dense pass, and the check of the candidates
    assert all(v == v and v >= 0 for v in result.info["check_losses"].values())


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_walk_attention_runs_the_eager_kernel_inside_and_restores_the_model_s(arch: str) -> None:
    model = tiny_model(arch, layers=2)
    model.set_attn_implementation("sdpa")
    eager = tiny_model(arch, layers=2)
    eager.set_attn_implementation("eager")
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with precision.walk_attention(model, "eager"):
            assert model.config._attn_implementation == "eager"
            inside = capture_inputs(model, arch_for(model), [ids], device="cpu")
        assert model.config._attn_implementation == "sdpa"
        with precision.walk_attention(model, "model"):
            assert model.config._attn_implementation == "sdpa"
        expected = capture_inputs(eager, arch_for(eager), [ids], device="cpu")
    # The masks the walk captured are the eager kernel's (a tensor; sdpa may pass none).
    mask, want = inside[0].kwargs.get("attention_mask"), expected[0].kwargs.get("attention_mask")
    assert isinstance(want, (torch.Tensor, dict))
    assert type(mask) is type(want)
    layer = decoder_layers(model, arch_for(model))[0]
    with precision.walk_attention(model, "eager"):
        out = run_layer(layer, inside, device="cpu")[0]
    ref = run_layer(decoder_layers(eager, arch_for(eager))[0], expected, device="cpu")[0]
    torch.testing.assert_close(out, ref)
