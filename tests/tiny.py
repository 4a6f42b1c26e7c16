"""Tiny random models and a tiny tokenizer for fast tests: no download, seconds to build.

Shared by unit, integration and e2e tests. ``tiny_model_dir`` writes a complete Hugging Face
folder (config, safetensors, tokenizer) that the engine loads like any local model.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

VOCAB = 512
ARCHES = ("llama", "qwen2", "mistral", "opt")


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = "\n\n".join(v for _, v in sorted(topics.items()))[:100_000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer)
    return tok.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
    )


def tiny_config(arch: str = "llama", *, layers: int = 2, hidden: int = 64):
    common = dict(
        vocab_size=VOCAB, num_hidden_layers=layers, hidden_size=hidden, max_position_embeddings=1024
    )
    if arch == "llama":
        return LlamaConfig(
            **common,
            intermediate_size=hidden * 2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        )
    if arch == "mistral":
        # sliding_window shorter than the tests' sequences, so the windowed attention mask is
        # what the walker captures and replays
        return MistralConfig(
            **common,
            intermediate_size=hidden * 2,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=8,
            tie_word_embeddings=False,
        )
    if arch == "qwen2":
        return Qwen2Config(
            **common,
            intermediate_size=hidden * 2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    if arch == "opt":
        return OPTConfig(
            vocab_size=VOCAB,
            num_hidden_layers=layers,
            hidden_size=hidden,
            ffn_dim=hidden * 2,
            num_attention_heads=4,
            max_position_embeddings=1024,
            word_embed_proj_dim=hidden,
            do_layer_norm_before=True,
            enable_bias=True,
        )
    raise ValueError(f"unknown tiny arch {arch!r}")


def tiny_model(arch: str = "llama", *, layers: int = 2, hidden: int = 64, seed: int = 0) -> PreTrainedModel:
    """A float32 random model in eval mode; norms and biases are randomised too, so that
    tests of folding and of bias handling see non-trivial values."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, layers=layers, hidden=hidden))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02)
    return model.eval()


def tiny_model_dir(
    root: Path, arch: str = "llama", *, layers: int = 2, hidden: int = 64, seed: int = 0
) -> Path:
    """Write a loadable Hugging Face folder (weights + tokenizer) under ``root/arch``."""
    out = Path(root) / f"tiny-{arch}-{layers}x{hidden}-s{seed}"
    if (out / "config.json").exists():
        return out
    tiny_model(arch, layers=layers, hidden=hidden, seed=seed).save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


def tiny_job(model: Path, sparsity: object, method: dict, *, samples: int = 4, **extra: object):
    """A compression job for a tiny model: ``samples`` pydoc sequences of 32 tokens (seed 1) to
    calibrate on, no evaluation; ``extra`` adds top-level sections (e.g. ``options``)."""
    from core.spec import CompressionSpec  # (tests/tiny.py builds models; most of its users need no spec)

    return CompressionSpec.from_dict(
        {
            "model": str(model),
            "sparsity": sparsity,
            "method": method,
            "calibration": {"source": "pydoc", "samples": samples, "seq_len": 32, "seed": 1},
            "evaluation": {"sources": ["none"]},
            **extra,
        }
    )
