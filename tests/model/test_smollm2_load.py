"""The real benchmark model: the smollm2-135m alias, the GGUF path, and walker perplexity on it."""

from __future__ import annotations

import math

import pytest
import torch

from spruce.core.builtins import SMOLLM2, fetch_gguf
from spruce.core.evaluate import perplexity
from spruce.core.models import load_model

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(2)
    return load_model("smollm2-135m")


def test_the_alias_is_the_benchmark_model(smollm2):
    config = smollm2.model.config
    assert smollm2.meta["source"] == "alias" and smollm2.arch.name == "llama"
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (30, 576, 1536)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert smollm2.meta["params"] == pytest.approx(134.5e6, rel=0.01)
    assert getattr(config, "quantization_config", None) is None


def test_the_gguf_file_loads_to_the_cached_weights(smollm2, tmp_path):
    gguf = fetch_gguf(SMOLLM2, tmp_path)
    loaded = load_model(str(gguf))
    assert loaded.meta["source"] == "gguf"
    assert getattr(loaded.model.config, "quantization_config", None) is None
    cached = smollm2.model.state_dict()
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, cached[name]), name
    text = "def walk(layers):\n    return [layer for layer in layers]"
    assert loaded.tokenizer(text)["input_ids"] == smollm2.tokenizer(text)["input_ids"]


def test_walker_perplexity_equals_the_plain_forward(smollm2):
    from pydoc_data.topics import topics

    text = "\n\n".join(v for _, v in sorted(topics.items()))[:20_000]
    ids = torch.tensor(smollm2.tokenizer(text, add_special_tokens=False)["input_ids"])
    got = perplexity(smollm2.model, smollm2.arch, ids, seq_len=256, max_windows=3, batch_size=2)
    with torch.no_grad():
        windows = ids[: 3 * 256].view(3, 256)
        want = math.exp(torch.stack([smollm2.model(w[None], labels=w[None]).loss for w in windows]).mean())
    assert got.windows == 3
    assert got.ppl == pytest.approx(want, rel=1e-4)
    assert 1.5 < got.ppl < 100  # a pretrained model on English prose, not random weights
