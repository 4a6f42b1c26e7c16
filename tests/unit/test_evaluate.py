"""Perplexity through the walker equals the plain Hugging Face loss, window by window."""

from __future__ import annotations

import math

import pytest
import torch

from core.arch import arch_for
from core.errors import SpecError
from core.evaluate import perplexity
from tests.tiny import ARCHES, VOCAB, tiny_model

pytestmark = pytest.mark.unit


def _tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def _hf_perplexity(model, token_ids: torch.Tensor, seq_len: int, windows: int) -> float:
    """Mean of the per-window HF losses (equal-length windows: the token-weighted mean)."""
    with torch.no_grad():
        losses = [
            model(w[None], labels=w[None]).loss for w in token_ids[: windows * seq_len].view(windows, seq_len)
        ]
    return math.exp(torch.stack(losses).mean().item())


@pytest.mark.parametrize("name", ARCHES)
def test_perplexity_equals_the_plain_hugging_face_loss(name):
    model = tiny_model(name)
    arch = arch_for(model)
    tokens = _tokens(7 * 24 + 5)  # 7 full windows and a tail that is not used
    seen: list[tuple[int, int]] = []

    got = perplexity(
        model,
        arch,
        tokens,
        seq_len=24,
        max_windows=40,
        batch_size=3,
        on_layer=lambda i, n: seen.append((i, n)),
    )

    assert got.windows == 7 and got.tokens == 7 * 23
    assert got.ppl == pytest.approx(_hf_perplexity(model, tokens, 24, 7), rel=1e-5)
    assert got.nll == pytest.approx(math.log(got.ppl), rel=1e-12)
    assert seen == [(1, 2), (2, 2)]


def test_max_windows_caps_the_windows_from_the_start():
    model = tiny_model("llama")
    arch = arch_for(model)
    tokens = _tokens(10 * 16)
    got = perplexity(model, arch, tokens, seq_len=16, max_windows=4, batch_size=4)
    assert got.windows == 4 and got.tokens == 4 * 15
    assert got.ppl == pytest.approx(_hf_perplexity(model, tokens, 16, 4), rel=1e-5)


def test_logit_chunks_do_not_change_the_result():
    model = tiny_model("qwen2")
    arch = arch_for(model)
    tokens = _tokens(5 * 20)
    whole = perplexity(model, arch, tokens, seq_len=20, batch_size=2, chunk_tokens=4096)
    chunked = perplexity(model, arch, tokens, seq_len=20, batch_size=2, chunk_tokens=7)
    assert chunked.nll == pytest.approx(whole.nll, rel=1e-6)


def test_text_shorter_than_one_window_is_a_spec_error():
    model = tiny_model("opt")
    with pytest.raises(SpecError, match="fewer than one window") as err:
        perplexity(model, arch_for(model), _tokens(31), seq_len=32)
    assert err.value.param == "evaluation.seq_len"


def test_the_model_is_unchanged_and_gradients_stay_off():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    perplexity(model, arch_for(model), _tokens(64), seq_len=16)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
