"""Magnitude with one threshold per layer (``magnitude_scope: layer``, the reference preset's):
llm-compressor's unstructured mask, ties at the threshold included."""

from __future__ import annotations

import pytest
import torch

from spruce.core.pruners import prune_weight
from spruce.core.sparsity import LayerTarget, layer_mask
from spruce.core.spec import CompressionSpec

pytestmark = pytest.mark.unit


def _llmcompressor_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """llm-compressor 0.14's unstructured mask creator (pruning/utils/pytorch/mask_factory.py)."""
    prune_elements = int(sparsity * scores.numel())
    threshold, _ = torch.topk(scores.view(-1), prune_elements, largest=False)
    return scores > threshold[-1]


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_layer_mask_is_llmcompressors_with_ties(ratio: float) -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 96, generator=g)
    W = torch.round(W * 4) / 4  # few levels: many ties, as in a model dequantized from 4 bits
    assert torch.equal(layer_mask(W.abs(), ratio), _llmcompressor_mask(W.abs(), ratio))
    rows = (~layer_mask(W.abs(), ratio)).float().mean(dim=1)
    assert rows.max() - rows.min() > 0.1  # one threshold for the matrix: rows differ


def test_prune_weight_follows_the_scope_at_unstructured_targets_only() -> None:
    g = torch.Generator().manual_seed(1)
    W = torch.randn(32, 64, generator=g) * torch.linspace(0.1, 2.0, 32)[:, None]  # rows of different scale
    half = LayerTarget.from_sparsity(CompressionSpec.from_dict({"model": "m", "sparsity": 0.5}).sparsity, 0.5)
    row = prune_weight(W, "magnitude", half, None)
    layer = prune_weight(W, "magnitude", half, None, magnitude_scope="layer")
    assert torch.equal(layer.keep, _llmcompressor_mask(W.abs(), 0.5))
    assert (~row.keep).sum(dim=1).unique().tolist() == [32]  # each row loses half
    assert not torch.equal(row.keep, layer.keep)
    nm = LayerTarget.from_sparsity(
        CompressionSpec.from_dict({"model": "m", "sparsity": "2:4"}).sparsity, None
    )
    same = prune_weight(W, "magnitude", nm, None, magnitude_scope="layer")
    assert torch.equal(same.keep, prune_weight(W, "magnitude", nm, None).keep)  # N:M groups are per row


def test_the_plan_records_the_scope_where_it_applies() -> None:
    def plan(pruner: str, sparsity: object, preset: str = "reference"):
        body = {"model": "m", "sparsity": sparsity, "method": {"pruner": pruner, "preset": preset}}
        return CompressionSpec.from_dict(body).resolve()

    assert plan("magnitude", 0.5).magnitude_scope == "layer"
    assert plan("magnitude", 0.5, "default").magnitude_scope == "row"
    assert plan("magnitude", "2:4").magnitude_scope is None and plan("wanda", 0.5).magnitude_scope is None


def test_sparsegpt_selection_reaches_the_pruner() -> None:
    """``selection: block`` (the reference preset's) is SparseGPT's paper selection: each block's
    lowest scores; prune_weight hands it to ``sparsegpt``, and it differs from the default."""
    from spruce.core.pruners import sparsegpt

    g = torch.Generator().manual_seed(2)
    X = torch.randn(256, 64, generator=g) * torch.linspace(0.2, 3.0, 64)
    W = torch.randn(16, 64, generator=g)
    H = X.T @ X

    class Stats:  # what prune_weight reads of SparseGPT's statistics
        def hessian(self) -> torch.Tensor:
            return H

        def cross(self) -> None:
            return None

    half = LayerTarget.from_sparsity(CompressionSpec.from_dict({"model": "m", "sparsity": 0.5}).sparsity, 0.5)
    block = prune_weight(W, "sparsegpt", half, Stats(), blocksize=16, selection="block")  # type: ignore[arg-type]
    layer = prune_weight(W, "sparsegpt", half, Stats(), blocksize=16)  # type: ignore[arg-type]
    assert torch.equal(block.keep, sparsegpt(W, H, half, blocksize=16, selection="block").keep)
    assert (~block.keep).sum().item() == (~layer.keep).sum().item() == 16 * 32
    assert not torch.equal(block.keep, layer.keep)
    body = {"model": "m", "sparsity": 0.5, "method": {"pruner": "sparsegpt", "preset": "reference"}}
    spec = CompressionSpec.from_dict(body)
    assert spec.selection == "block" and spec.resolve().selection == "block"


def test_the_textbook_inverse_hessian_is_the_same_factor_by_another_route() -> None:
    """``hinv: textbook`` (the reference preset's, llm-compressor's cholesky_inverse route) gives
    the same upper factor U of (H + lambda I)^-1 = U^T U, up to rounding."""
    from spruce.core.pruners import inverse_hessian_factor

    g = torch.Generator().manual_seed(3)
    X = torch.randn(300, 48, generator=g) * torch.linspace(0.2, 3.0, 48)
    H = X.T @ X
    solve = inverse_hessian_factor(H, dampening=0.01).Hinv
    textbook = inverse_hessian_factor(H, dampening=0.01, textbook=True).Hinv
    torch.testing.assert_close(textbook, solve, rtol=1e-3, atol=1e-5)
    lam = 0.01 * H.diagonal().mean()
    inv = torch.linalg.inv((H + lam * torch.eye(48)).double()).float()
    torch.testing.assert_close(textbook.T @ textbook, inv, rtol=1e-3, atol=1e-6)
    assert torch.equal(textbook, torch.triu(textbook))
    body = {"model": "m", "sparsity": "2:4", "method": {"pruner": "sparsegpt", "preset": "reference"}}
    assert CompressionSpec.from_dict(body).resolve().hinv == "textbook"
    assert CompressionSpec.from_dict({**body, "method": {"pruner": "wanda"}}).resolve().hinv is None
