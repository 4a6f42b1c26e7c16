"""SparseGPT's sweep order on the real benchmark model's layers: the measured default ("auto")
must reconstruct every probed linear better than the stored column order (docs/pruners.md)."""

from __future__ import annotations

import pytest
import torch

from spruce.core.arch import decoder_layers
from spruce.core.data import batched, calibration_ids
from spruce.core.models import load_model
from spruce.core.passes import collect_stats
from spruce.core.pruners import reconstruction_error, sparsegpt
from spruce.core.sparsity import LayerTarget
from spruce.core.spec import TextSpec
from spruce.core.walker import capture_inputs

pytestmark = pytest.mark.model


def test_auto_order_beats_the_stored_order_on_real_layers() -> None:
    torch.set_num_threads(2)
    loaded = load_model("smollm2-135m")
    arch = loaded.arch
    ids, _ = calibration_ids(loaded.tokenizer, TextSpec(samples=8, seq_len=512, seed=0))
    batches = capture_inputs(loaded.model, arch, batched(ids, 8), device="cpu")
    layer = decoder_layers(loaded.model, arch)[0]
    stats, _ = collect_stats(layer, arch, batches, device="cpu", want_hessian=True)
    for path in (arch.o, arch.mlp_out):
        W, H = layer.get_submodule(path).weight.data, stats[path].hessian()
        for target in (LayerTarget(0.5), LayerTarget(0.5, 2, 4)):
            auto = reconstruction_error(W, sparsegpt(W, H, target, order="auto").W, H)
            stored = reconstruction_error(W, sparsegpt(W, H, target, order="natural").W, H)
            assert auto < stored, (path, str(target), auto, stored)
