"""Perplexity through the walker equals the plain Hugging Face loss, window by window; word and
byte perplexity and bits per byte follow lm-evaluation-harness' definitions on the windows' text."""

from __future__ import annotations

import json
import math

import pytest
import torch

from spruce.core.arch import arch_for
from spruce.core.errors import SpecError
from spruce.core.evaluate import ModelEvaluation, Perplexity, count_bytes, count_words, perplexity
from spruce.core.lmeval import TaskResults
from tests.tiny import ARCHES, VOCAB, tiny_model, tiny_tokenizer

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


def _text_ids(tokenizer) -> tuple[str, torch.Tensor]:
    # non-ASCII on purpose: bytes and characters differ
    text = " ".join(f"Ünïcode wörd {i}, naïve café — line {i % 7}.\n" for i in range(400))
    return text, torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_word_and_byte_metrics_follow_lm_eval_on_the_windows_text():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    text, ids = _text_ids(tok)
    got = perplexity(model, arch_for(model), ids, seq_len=32, max_windows=5, batch_size=2, tokenizer=tok)

    # a byte-level BPE decodes to exactly the text it encoded: the windows cover a prefix of it
    covered = tok.decode(ids[: 5 * 32].tolist())
    assert text.startswith(covered) and len(covered) < len(text)
    assert got.words == len(covered.split()) + (1 if covered[-1].isspace() else 0)
    assert got.bytes == len(covered.encode("utf-8")) > len(covered)
    assert got.total_nll == pytest.approx(got.nll * got.tokens, rel=1e-9)
    assert got.word_perplexity == pytest.approx(math.exp(got.total_nll / got.words), rel=1e-12)
    assert got.byte_perplexity == pytest.approx(math.exp(got.total_nll / got.bytes), rel=1e-12)
    assert got.bits_per_byte == pytest.approx(got.total_nll / got.bytes / math.log(2), rel=1e-12)
    assert got.byte_perplexity == pytest.approx(2**got.bits_per_byte, rel=1e-12)
    # several bytes per token and several tokens per word: the three figures are ordered
    assert got.byte_perplexity < got.ppl < got.word_perplexity


def test_the_metrics_need_no_second_forward_pass():
    model, tok = tiny_model("qwen2"), tiny_tokenizer()
    _, ids = _text_ids(tok)
    calls = []
    hook = model.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    plain = perplexity(model, arch_for(model), ids, seq_len=32, max_windows=4, batch_size=4)
    n_plain = len(calls)
    counted = perplexity(model, arch_for(model), ids, seq_len=32, max_windows=4, batch_size=4, tokenizer=tok)
    hook.remove()
    assert len(calls) == 2 * n_plain == 2  # one batch of 4 windows, one forward each time
    assert counted.ppl == plain.ppl and counted.total_nll == plain.total_nll
    assert plain.words is None and plain.metrics()["bits_per_byte"] is None


def test_counts_are_lm_eval_s():
    assert count_words("a b\n\nc") == 3
    assert count_words("a b ") == 3  # lm-eval's re.split keeps the empty string after a trailing space
    assert count_bytes("naïve") == 6


def test_metrics_are_the_report_s_row():
    row = Perplexity(ppl=math.e, nll=1.0, tokens=10, windows=1, total_nll=10.0, words=5, bytes=20).metrics()
    assert row["token_perplexity"] == math.e
    assert row["word_perplexity"] == pytest.approx(math.exp(2.0))
    assert row["bits_per_byte"] == pytest.approx(0.5 / math.log(2))
    assert (row["tokens"], row["words"], row["bytes"], row["windows"]) == (10, 5, 20, 1)


def test_a_checkpoint_keeps_the_dense_figures():
    dense = ModelEvaluation(
        perplexity={"pydoc": 12.5},
        metrics={"pydoc": {"token_perplexity": 12.5, "bits_per_byte": 0.9}},
        tasks=TaskResults(
            metrics={"mc": {"acc": 0.4, "acc_stderr": None}}, samples={"mc": 10}, shots={"mc": 0}
        ),
    )
    assert ModelEvaluation.from_dict(json.loads(json.dumps(dense.to_dict()))) == dense
    # a checkpoint of a run that measured only token perplexity
    old = ModelEvaluation.from_dict({"perplexity": {"pydoc": 3.0}})
    assert old.perplexity == {"pydoc": 3.0} and old.metrics == {} and old.tasks is None
