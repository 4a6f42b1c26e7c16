r"""Perplexity, the BENCHMARK.md protocol, computed through the layer walker.

Consecutive non-overlapping windows of ``seq_len`` tokens from the start of the text, at most
``max_windows``; the mean next-token negative log-likelihood over every predicted token (the
Hugging Face ``labels=input_ids`` convention: ``seq_len - 1`` predictions per window); ppl = exp(mean).
Going through the walker keeps one decoder layer on the device at a time, as in pruning; the
logits are computed in chunks of positions because the vocabulary can be large (49152 for SmolLM2).

Beside token perplexity, lm-evaluation-harness' per-text figures (its ``loglikelihood_rolling``
metrics), from the same summed NLL: ``word_perplexity = exp(NLL / words)``, ``byte_perplexity =
exp(NLL / bytes)``, ``bits_per_byte = NLL / bytes / ln 2``, with words and UTF-8 bytes counted as
lm-eval counts a document (``len(re.split(r"\s+", text))``, ``len(text.encode("utf-8"))``) on the
text the windows cover (their tokens decoded). Unlike tokens, words and bytes do not depend on the
tokenizer, so these compare across models and with published lm-eval figures (which predict every
token of a document, where a window here leaves its first token as context: 1 in ``seq_len``).

``evaluate_model`` is one model's whole evaluation in a run: every text's figures, then the
lm-evaluation-harness tasks the job names (core.lmeval).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spruce.core import lmeval
from spruce.core.arch import ArchSpec, decoder_layers, logit_softcap
from spruce.core.errors import SpecError
from spruce.core.walker import Device, capture_inputs, move_module, walk

if TYPE_CHECKING:
    from spruce.core.models import LoadedModel
    from spruce.core.spec import EvalSpec


class RunLike(Protocol):
    """What evaluation needs of the run (core.progress.Run): progress, cancellation."""

    def progress(
        self, stage: str, within: float, layer: int | None = None, layers: int | None = None
    ) -> None: ...

    def check_stop(self, where: str) -> None: ...

    def stop_fn(self) -> Callable[[], bool] | None: ...


@dataclass
class Perplexity:
    ppl: float
    nll: float  # mean next-token negative log-likelihood, nats
    tokens: int  # predicted tokens: windows x (seq_len - 1)
    windows: int
    total_nll: float = 0.0  # summed over the predicted tokens, nats
    words: int | None = None  # in the text the windows cover (None: no tokenizer was given)
    bytes: int | None = None  # UTF-8 bytes of that text

    @property
    def word_perplexity(self) -> float | None:
        return math.exp(self.total_nll / self.words) if self.words else None

    @property
    def byte_perplexity(self) -> float | None:
        return math.exp(self.total_nll / self.bytes) if self.bytes else None

    @property
    def bits_per_byte(self) -> float | None:
        return self.total_nll / self.bytes / math.log(2) if self.bytes else None

    def metrics(self) -> dict[str, Any]:
        """The report's per-text figures (``report["evaluation_metrics"][model][text]``)."""
        return {
            "token_perplexity": self.ppl,
            "word_perplexity": self.word_perplexity,
            "byte_perplexity": self.byte_perplexity,
            "bits_per_byte": self.bits_per_byte,
            "nll": self.total_nll,
            "tokens": self.tokens,
            "words": self.words,
            "bytes": self.bytes,
            "windows": self.windows,
        }


def count_words(text: str) -> int:
    """Words as lm-evaluation-harness counts them for word perplexity (``Task.count_words``)."""
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    """UTF-8 bytes, as lm-evaluation-harness counts them for byte perplexity and bits per byte."""
    return len(text.encode("utf-8"))


def covered_text(tokenizer: Any, token_ids: Tensor) -> str:
    """The text of ``token_ids`` as the tokenizer decodes it, special tokens and spacing kept."""
    return str(
        tokenizer.decode(token_ids.tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    )


def perplexity(
    model: nn.Module,
    arch: ArchSpec,
    token_ids: Tensor,
    *,
    seq_len: int = 512,
    max_windows: int = 40,
    batch_size: int = 4,
    device: Device = "cpu",
    on_layer: Callable[[int, int], None] | None = None,
    chunk_tokens: int = 512,
    tokenizer: Any = None,
) -> Perplexity:
    """Perplexity of ``model`` on the 1-D ``token_ids`` (see the module docstring for the protocol).

    With ``tokenizer``, the words and bytes of the windows' text are counted too, so the result
    also has word and byte perplexity and bits per byte. Raises ``SpecError`` when the text is
    shorter than one window.
    """
    if token_ids.dim() != 1:
        raise ValueError(f"token_ids must be 1-D, got shape {tuple(token_ids.shape)}")
    n = min(max_windows, token_ids.numel() // seq_len)
    if n < 1:
        raise SpecError(
            f"the evaluation text has {token_ids.numel()} tokens, fewer than one window of {seq_len}",
            param="evaluation.seq_len",
        )
    windows = token_ids[: n * seq_len].view(n, seq_len)  # [n, seq]
    ids = windows.split(batch_size)
    total = 0.0
    with torch.no_grad():
        final = walk(
            model,
            arch,
            capture_inputs(model, arch, ids, device=device),
            device=device,
            visit=None,
            on_layer=on_layer,
        )
        head = output_head(model, arch)
        homes = [(m, home) for m in head if (home := _device_of(m)) is not None]  # soft-capping has none
        try:
            for m in head:
                move_module(m, device)
            for batch_ids in ids:
                batch = final.pop(0)  # frees each batch's activations once used
                total += _batch_nll(head, batch.hidden, batch_ids, device=device, chunk_tokens=chunk_tokens)
        finally:
            for m, home in homes:
                move_module(m, home)
    tokens = n * (seq_len - 1)
    nll = total / tokens
    text = covered_text(tokenizer, windows.reshape(-1)) if tokenizer is not None else None
    return Perplexity(
        ppl=math.exp(nll),
        nll=nll,
        tokens=tokens,
        windows=n,
        total_nll=total,
        words=count_words(text) if text is not None else None,
        bytes=count_bytes(text) if text is not None else None,
    )


@dataclass
class ModelEvaluation:
    """One model's figures in a run: token perplexity per text (``report["perplexity"][model]``),
    every per-text figure (``report["evaluation_metrics"][model]``) and lm-eval task results."""

    perplexity: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: lmeval.TaskResults | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON, for a checkpoint: a resumed run reports the dense figures measured before it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelEvaluation:
        tasks = data.get("tasks")
        return cls(
            perplexity=dict(data.get("perplexity", {})),
            metrics=dict(data.get("metrics", {})),
            tasks=lmeval.TaskResults(**tasks) if tasks else None,
        )


def evaluate_model(
    loaded: LoadedModel,
    texts: dict[str, tuple[Tensor, dict[str, Any]]],
    settings: EvalSpec,
    *,
    tasks: lmeval.Tasks | None,
    device: torch.device,
    run: RunLike,
    stage: str,
) -> ModelEvaluation:
    """Every text's perplexity figures (progress per layer within ``stage``), then ``tasks``."""
    out = ModelEvaluation()
    total = max(1, len(texts))
    layers = len(decoder_layers(loaded.model, loaded.arch))
    for k, (src, (ids, _)) in enumerate(texts.items()):

        def on_layer(i: int, n: int, k: int = k) -> None:
            run.progress(stage, (k + i / n) / total, i, n)

        result = perplexity(
            loaded.model,
            loaded.arch,
            ids,
            seq_len=settings.seq_len,
            max_windows=settings.max_windows,
            batch_size=settings.batch_size,
            device=device,
            on_layer=on_layer if layers else None,
            tokenizer=loaded.tokenizer,
        )
        out.perplexity[src] = result.ppl
        out.metrics[src] = result.metrics()
    if tasks is not None:
        run.check_stop(f"before the lm-eval tasks of {stage!r}")
        out.tasks = lmeval.run(
            loaded.model,
            loaded.tokenizer,
            tasks,
            device=device,
            batch_size=settings.batch_size,
            limit=settings.task_limit or None,
            should_stop=run.stop_fn(),
        )
    return out


def evaluation_report(
    dense: ModelEvaluation, sparse: ModelEvaluation, tasks: lmeval.Tasks | None, settings: EvalSpec
) -> dict[str, Any]:
    """The report's ``evaluation_metrics`` (per model, text -> figures) and ``tasks`` (None: no tasks)."""
    limit = settings.task_limit or None
    return {
        "evaluation_metrics": {"dense": dense.metrics, "sparse": sparse.metrics},
        "tasks": lmeval.report(dense.tasks, sparse.tasks, limit=limit) if tasks is not None else None,
    }


def output_head(model: nn.Module, arch: ArchSpec) -> list[nn.Module]:
    """The modules after the last decoder layer, in order: final norm, projection if any, LM head,
    and the logits' soft-capping where the model has one (Gemma 2)."""
    found = (_optional_module(model, arch.final_norm), _optional_module(model, arch.final_proj))
    modules = [m for m in found if m is not None]
    lm_head = model.get_output_embeddings()  # type: ignore[operator]
    assert isinstance(lm_head, nn.Module), "the model has no output embeddings (LM head)"
    cap = logit_softcap(model)
    return [*modules, lm_head, *([SoftCap(cap)] if cap is not None else [])]


class SoftCap(nn.Module):
    """Logit soft-capping: c * tanh(logits / c), as the model's own forward applies it."""

    def __init__(self, cap: float) -> None:
        super().__init__()
        self.cap = cap

    def forward(self, logits: Tensor) -> Tensor:
        return torch.tanh(logits / self.cap) * self.cap


def _batch_nll(
    head: list[nn.Module], hidden: Tensor, ids: Tensor, *, device: Device, chunk_tokens: int
) -> float:
    """Summed next-token NLL (float32 math) of one batch, from the last decoder layer's output."""
    H = hidden.shape[-1]
    x = hidden[:, :-1].reshape(-1, H)  # [b * (seq - 1), hidden]: the last position predicts nothing
    targets = ids[:, 1:].reshape(-1)  # [b * (seq - 1)]
    total = 0.0
    for start in range(0, x.shape[0], chunk_tokens):
        h = x[start : start + chunk_tokens].to(device)  # [chunk, hidden]
        for module in head:
            h = module(h)
        logits = h.float()  # [chunk, vocab]
        t = targets[start : start + chunk_tokens].to(device)
        total += F.cross_entropy(logits, t, reduction="sum").item()
    return total


def _optional_module(root: nn.Module, path: str) -> nn.Module | None:
    """The module at dotted ``path``, or None where the path is empty or ends at a None attribute."""
    if not path:
        return None
    module: object = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module if isinstance(module, nn.Module) else None


def _device_of(module: nn.Module) -> torch.device | None:
    return next((p.device for p in module.parameters()), None)
