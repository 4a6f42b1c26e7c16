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
    Gemma2Config,
    Gemma3Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
    SiglipVisionConfig,
)

VOCAB = 512
# "llama3" is a Llama with Llama 3.x rope scaling; "gemma3" the multimodal wrapper around
# gemma3_text (its vision tower is tiny and untouched). Gemma layers alternate a sliding-window
# layer (window 8, shorter than the tests' sequences) with a global one.
ARCHES = ("llama", "qwen2", "mistral", "opt", "llama3", "qwen3", "gemma2", "gemma3_text", "gemma3", "phi3")


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
    attention = dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=hidden * 2)
    if arch == "llama3":
        llama3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16}  # fmt: skip
        return LlamaConfig(**common, **attention, rope_parameters=llama3, tie_word_embeddings=True)
    if arch == "qwen3":
        return Qwen3Config(**common, **attention, head_dim=hidden // 4, tie_word_embeddings=False)
    if arch == "gemma2":
        return Gemma2Config(**common, **_gemma(hidden, layers))
    if arch == "gemma3_text":
        return Gemma3TextConfig(**common, **_gemma(hidden, layers))
    if arch == "gemma3":
        vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, image_size=16, patch_size=4)  # fmt: skip
        text = Gemma3TextConfig(**common, **_gemma(hidden, layers))
        return Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4)
    if arch == "phi3":
        # Phi-4-mini's partial rotary: 3/4 of each head's dims rotate, the rest pass through
        return Phi3Config(**common, **attention, partial_rotary_factor=0.75, pad_token_id=0, bos_token_id=1,
                          eos_token_id=2, tie_word_embeddings=False)  # fmt: skip
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


def _gemma(hidden: int, layers: int) -> dict:
    return dict(
        intermediate_size=hidden * 2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        query_pre_attn_scalar=hidden // 4,
        sliding_window=8,
        layer_types=[("sliding_attention", "full_attention")[i % 2] for i in range(layers)],
        tie_word_embeddings=True,
    )


def tiny_model(arch: str = "llama", *, layers: int = 2, hidden: int = 64, seed: int = 0) -> PreTrainedModel:
    """A float32 random model in eval mode; norms and biases are randomised too, so that
    tests of folding and of bias handling see non-trivial values."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, layers=layers, hidden=hidden))
    offset = 1.0 if arch.startswith("gemma") else 0.0  # Gemma's norms scale by (1 + w)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(0.5 - offset, 1.5 - offset)
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


def tiny_job(model: Path, sparsity: object, settings: dict, *, samples: int = 4, **experimental: object):
    """A compression job for a tiny model: ``samples`` pydoc sequences of 32 tokens (seed 1) to
    calibrate on, no evaluation. ``settings`` holds the method's public options (pruner, preset,
    allocation; ``induction`` a bool, or a dict of its experimental settings with ``enabled``) and
    any experimental option by name; ``experimental`` adds more (e.g. ``batch_size=4``)."""
    from spruce.core.spec import (
        CompressionSpec,  # (tests/tiny.py builds models; most of its users need no spec)
    )

    method = {k: v for k, v in settings.items() if k in ("pruner", "preset", "allocation")}
    extra: dict = {k: v for k, v in settings.items() if k not in method and k != "induction"}
    induction = settings.get("induction", False)
    if isinstance(induction, dict):
        induction = dict(induction)
        extra["induction"] = induction
        method["induction"] = induction.pop("enabled", False)
    else:
        method["induction"] = induction
    return CompressionSpec.from_dict(
        {
            "model": str(model),
            "sparsity": sparsity,
            "method": method,
            "calibration": {"source": "pydoc", "samples": samples, "seq_len": 32, "seed": 1},
            "evaluation": {"sources": ["none"]},
            "experimental": {**extra, **experimental},
        }
    )
