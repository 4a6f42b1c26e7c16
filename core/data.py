"""Calibration and evaluation text: where it comes from, how it is tokenized and sampled.

Sources:

- ``pydoc``: the offline Text A of BENCHMARK.md, ``"\\n\\n".join(v for k, v in
  sorted(pydoc_data.topics.topics.items()))``, tokenized once without special tokens. The first
  60% of its tokens (``int(0.6 * len)``) calibrate, the rest evaluate, so the two never overlap.
  Calibration windows start at ``torch.randint(0, len(span) - seq_len, (samples,),
  generator=torch.Generator().manual_seed(seed))``: this is the benchmark's recipe bit for bit.
- a local ``.txt`` file (the whole file) or ``.jsonl`` file (one JSON object per line, the text in
  ``field``; documents joined by a blank line): the same 60/40 token split and sampling as pydoc.
- ``wikitext2`` and ``c4`` through the ``datasets`` package, split and sampled as the SparseGPT
  and Wanda reference code does (calibration from the train split, evaluation from test /
  validation). When the Hugging Face hub cannot be reached, the failure is a quick
  ``DatasetUnavailable``; a machine with a local datasets cache runs with
  ``HF_DATASETS_OFFLINE=1`` and is served from that cache.
- any ``datasets`` source (core.hfdata): a hub ``owner/name``, a ``save_to_disk`` folder or
  ``.parquet`` / ``.arrow`` / ``.json`` files, with ``?config=&split=&field=``; chat ``messages``
  are rendered through the model's chat template. The whole split is sampled (calibration) or
  evaluated.
- ``fortunes``: Text C of BENCHMARK.md (core.fortunes), for evaluation only: the whole text, its
  first windows, never calibrated on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from spruce.core.errors import DatasetUnavailable, SpecError, UserError
from spruce.core.fortunes import FORTUNES, fortunes_text
from spruce.core.hfdata import DatasetRef, documents, is_dataset_source
from spruce.core.hfdata import hub_endpoint as _hub_endpoint
from spruce.core.hfdata import reachable as _reachable
from spruce.core.models import resolve_cache_dir
from spruce.core.spec import TextSpec

log = logging.getLogger(__name__)

Role = Literal["calibration", "evaluation"]

PYDOC = "pydoc"
HF = "hf"  # any datasets source (core.hfdata)
DATASETS: tuple[str, ...] = ("wikitext2", "c4")
FILE_SUFFIXES: tuple[str, ...] = (".txt", ".jsonl")
CALIBRATION_SHARE = 0.6  # BENCHMARK.md: first 60% of the tokens calibrate, the last 40% evaluate
C4_EVAL_DOCUMENTS = 1100  # SparseGPT / Wanda evaluate C4 on the first 1100 validation documents

_PARAM: dict[str, str] = {"calibration": "calibration.source", "evaluation": "evaluation.sources"}
_TOKEN_SPLIT: dict[str, str] = {"calibration": "tokens[0:60%]", "evaluation": "tokens[60%:100%]"}


@dataclass(frozen=True)
class TextInfo:
    """Where a text came from, recorded in the report so that a run can be reproduced."""

    source: str  # as given: "pydoc", "wikitext2", "c4", or a path
    kind: str  # "pydoc" | "file" | "dataset"
    sha256: str  # of the exact text used (utf-8)
    chars: int
    split: str  # what part was used, e.g. "tokens[0:60%]" / "tokens[60%:100%]" / "train" / "test"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "sha256": self.sha256,
            "chars": self.chars,
            "split": self.split,
        }


# ----------------------------------------------------------------------------------------------
# Public API


def load_text(source: str, *, role: Role, field: str = "text") -> tuple[str, TextInfo]:
    """The raw text of ``source`` for ``role`` and a description of it.

    For ``pydoc`` and files the whole text is returned (the 60/40 split happens on tokens, see
    ``split``); for datasets, the split the role reads (wikitext2 train/test, c4 train/validation).
    Raises ``DatasetUnavailable`` for a missing file or an unreachable dataset, ``SpecError`` for
    an unknown source name, ``UserError`` for a malformed file.
    """
    kind = _kind(source, role)
    if kind == "pydoc":
        text = pydoc_text()
        return text, _info(source, "pydoc", text, _TOKEN_SPLIT[role])
    if kind == FORTUNES:
        text = fortunes_text(resolve_cache_dir())
        return text, _info(source, FORTUNES, text, "tokens[0:100%]")
    if kind == "file":
        text = _read_file(Path(source).expanduser(), field=field, param=_PARAM[role])
        return text, _info(source, "file", text, _TOKEN_SPLIT[role])
    docs, split = _dataset_documents(source, role)
    text = _join_dataset(source, role, docs)
    return text, _info(source, "dataset", text, split)


def calibration_ids(tokenizer: Any, spec: TextSpec) -> tuple[torch.Tensor, dict[str, Any]]:
    """``spec.samples`` windows of ``spec.seq_len`` tokens, sampled with ``spec.seed``.

    Returns ids [samples, seq_len] int64 and a report dict (source, kind, sha256, chars, split,
    tokens in the sampled span, samples, seq_len, seed).
    """
    samples, seq_len, seed = spec.samples, spec.seq_len, spec.seed
    kind = _kind(spec.source, "calibration")
    if kind == "dataset" and spec.source == "c4":
        return _c4_calibration(tokenizer, spec)
    text, info, extra = _text_of(spec.source, kind, "calibration", spec.field, tokenizer)
    ids = tokenize_cached(tokenizer, text, info.sha256)  # [T]
    if kind == HF:
        span = ids  # the whole split: nothing of it is held out for evaluation
        windows = benchmark_windows(span, samples, seq_len, seed)
    elif kind == "dataset":
        span = ids  # the whole train split; SparseGPT / Wanda draw offsets with Python's random
        windows = _paper_windows(span, samples, seq_len, seed)
    else:
        span = ids[: _calibration_cut(len(ids))]
        windows = benchmark_windows(span, samples, seq_len, seed)
    report = {
        **info.to_dict(),
        "tokens": len(span),
        "total_tokens": len(ids),
        "samples": samples,
        "seq_len": seq_len,
        "seed": seed,
        "tokenizer": _tokenizer_name(tokenizer),
        **extra,
    }
    if kind == "file" and Path(spec.source).suffix.lower() == ".jsonl":
        report["field"] = spec.field
    return windows, report


def evaluation_ids(
    tokenizer: Any, source: str, *, field: str = "text"
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The evaluation token stream of ``source``: [T] int64, and a report dict.

    For pydoc and files this is the last 40% of the tokens (never overlapping calibration); for
    wikitext2 the test split, for c4 the first 1100 validation documents, for fortunes all of it.
    """
    kind = _kind(source, "evaluation")
    text, info, extra = _text_of(source, kind, "evaluation", field, tokenizer)
    ids = tokenize_cached(tokenizer, text, info.sha256)  # [T]
    whole = kind in ("dataset", FORTUNES, HF)  # nothing of these is cut for calibration
    span = ids if whole else ids[_calibration_cut(len(ids)) :]
    if len(span) < 2:
        raise UserError(
            f"evaluation text {source!r} has {len(span)} tokens after the split; at least 2 are needed",
            param=_PARAM["evaluation"],
        )
    report = {
        **info.to_dict(),
        "tokens": len(span),
        "total_tokens": len(ids),
        "tokenizer": _tokenizer_name(tokenizer),
        **extra,
    }
    if kind == "file" and Path(source).suffix.lower() == ".jsonl":
        report["field"] = field
    return span.clone(), report  # a copy: the cached stream must not be changed by the caller


def _text_of(
    source: str, kind: str, role: Role, field: str, tokenizer: Any
) -> tuple[str, TextInfo, dict[str, Any]]:
    """The text of ``source``, its description, and what a datasets source adds to the report."""
    if kind != HF:
        text, info = load_text(source, role=role, field=field)
        return text, info, {}
    ref = DatasetRef.parse(source, param=_PARAM[role])
    docs, extra = documents(ref, tokenizer, param=_PARAM[role])
    text = "\n\n".join(docs)
    if not text.strip():
        raise UserError(f"dataset {source!r} holds no text", param=_PARAM[role])
    return text, _info(source, HF, text, ref.split), {"documents": len(docs), **extra}


def batched(ids: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split the rows of ``ids`` [N, L] into batches of ``batch_size`` rows (the last may be smaller)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return list(ids.split(batch_size, dim=0))


# ----------------------------------------------------------------------------------------------
# Sampling (pure functions)


def benchmark_windows(span: torch.Tensor, samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """BENCHMARK.md's calibration recipe: ``samples`` windows of ``span`` [T] -> [samples, seq_len]."""
    _check_span(span, seq_len)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(span) - seq_len, (samples,), generator=gen)  # [samples]
    return torch.stack([span[o : o + seq_len] for o in starts.tolist()])  # [samples, seq_len]


def _paper_windows(span: torch.Tensor, samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """SparseGPT's wikitext2 sampling: ``random.randint(0, T - seq_len - 1)`` per window, seeded.

    A private ``random.Random`` replaces the reference code's global ``random.seed``.
    """
    _check_span(span, seq_len)
    rng = random.Random(seed)
    starts = [rng.randint(0, len(span) - seq_len - 1) for _ in range(samples)]
    return torch.stack([span[o : o + seq_len] for o in starts])  # [samples, seq_len]


def _check_span(span: torch.Tensor, seq_len: int) -> None:
    if len(span) <= seq_len:
        raise UserError(
            f"the calibration text has {len(span)} tokens, too few for windows of seq_len={seq_len} "
            f"(needs more than {seq_len}); use a longer text or a smaller seq_len",
            param="calibration.seq_len",
        )


def _calibration_cut(n_tokens: int) -> int:
    return int(CALIBRATION_SHARE * n_tokens)


# ----------------------------------------------------------------------------------------------
# Tokenization with a small, bounded cache


_CACHE_SIZE = 4
_cache: OrderedDict[tuple[Any, ...], torch.Tensor] = OrderedDict()
_cache_lock = threading.Lock()


def tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    """All of ``text`` as one token stream [T] int64, with no special tokens added."""
    # verbose=False: a long text exceeding model_max_length is intended here (it is windowed later)
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.int64)


def tokenize_cached(tokenizer: Any, text: str, sha256: str) -> torch.Tensor:
    """``tokenize`` once per (tokenizer, text): calibration and evaluation of a run share it.

    The key fingerprints the tokenizer (class, name_or_path, size, vocabulary), so two tokenizers
    that share a name but not a vocabulary never share an entry. At most ``_CACHE_SIZE`` streams
    are kept (least recently used goes first). Callers must not modify the returned tensor.
    """
    key = (_tokenizer_fingerprint(tokenizer), sha256)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    ids = tokenize(tokenizer, text)  # outside the lock: tokenizing the benchmark text takes ~1 s
    with _cache_lock:
        _cache[key] = ids
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return ids


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _tokenizer_fingerprint(tokenizer: Any) -> tuple[str, str, int, str]:
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()
    return (type(tokenizer).__name__, _tokenizer_name(tokenizer), len(tokenizer), digest)


def _tokenizer_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or "")


# ----------------------------------------------------------------------------------------------
# Sources


def pydoc_text() -> str:
    """Text A of BENCHMARK.md (about 465k characters with Python 3.11)."""
    from pydoc_data.topics import topics

    return "\n\n".join(v for k, v in sorted(topics.items()))


def _kind(source: str, role: Role) -> str:
    """Classify ``source``: 'pydoc', 'dataset' or 'file'; unknown names raise ``SpecError``."""
    if source == PYDOC:
        return "pydoc"
    if source == FORTUNES:
        if role == "calibration":
            raise SpecError(
                "fortunes is an evaluation text, out of the calibration domain: calibrate on pydoc, "
                "a dataset or a file",
                param=_PARAM[role],
            )
        return FORTUNES
    if source in DATASETS:
        return "dataset"
    if Path(source).suffix.lower() in FILE_SUFFIXES:
        return "file"
    if is_dataset_source(source):
        return HF
    known = ", ".join((PYDOC, *DATASETS, FORTUNES) if role == "evaluation" else (PYDOC, *DATASETS))
    raise SpecError(
        f"unknown text source {source!r}: use one of {known}, the path of a .txt or .jsonl file, or a "
        "datasets source (a hub owner/name, a save_to_disk folder, .parquet/.arrow/.json files)",
        param=_PARAM[role],
    )


def _info(source: str, kind: str, text: str, split: str) -> TextInfo:
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return TextInfo(source=source, kind=kind, sha256=sha, chars=len(text), split=split)


def _read_file(path: Path, *, field: str, param: str) -> str:
    if not path.is_file():
        raise DatasetUnavailable(f"text file {str(path)!r} does not exist or is not a file", param=param)
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8-sig")  # -sig: tolerate a leading byte-order mark
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path.name} is not valid UTF-8 (bad byte at offset {exc.start}); save it as UTF-8",
            param=param,
        ) from exc
    text = _jsonl_text(content, path.name, field, param) if path.suffix.lower() == ".jsonl" else content
    if not text.strip():
        raise UserError(f"{path.name} holds no text", param=param)
    return text


def _jsonl_text(content: str, name: str, field: str, param: str) -> str:
    """The ``field`` of every JSON object line, joined by blank lines; blank lines are skipped."""
    docs: list[str] = []
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{name} line {lineno} is not valid JSON ({exc.msg})", param=param) from exc
        if not isinstance(obj, dict) or field not in obj:
            raise UserError(f"{name} line {lineno} has no {field!r} field", param=param)
        value = obj[field]
        if not isinstance(value, str):
            raise UserError(
                f"{name} line {lineno}: field {field!r} is {type(value).__name__}, expected a string",
                param=param,
            )
        docs.append(value)
    return "\n\n".join(docs)


# ----------------------------------------------------------------------------------------------
# Datasets (wikitext2, c4) through the `datasets` package

# (path, name, data_files, split) per (source, role), as SparseGPT's datautils.py loads them.
_DATASET_SPLITS: dict[tuple[str, str], tuple[str, str | None, dict[str, str] | None, str]] = {
    ("wikitext2", "calibration"): ("wikitext", "wikitext-2-raw-v1", None, "train"),
    ("wikitext2", "evaluation"): ("wikitext", "wikitext-2-raw-v1", None, "test"),
    ("c4", "calibration"): ("allenai/c4", None, {"train": "en/c4-train.00000-of-01024.json.gz"}, "train"),
    (
        "c4",
        "evaluation",
    ): ("allenai/c4", None, {"validation": "en/c4-validation.00000-of-00008.json.gz"}, "validation"),
}


def _dataset_documents(source: str, role: Role) -> tuple[list[str], str]:
    """The ``text`` column of the split ``source`` uses for ``role``, and the split's name."""
    path, name, data_files, split = _DATASET_SPLITS[(source, role)]
    rows = _load_hf_split(path, name, data_files, split, source=source, param=_PARAM[role])
    docs = list(rows)
    if source == "c4" and role == "evaluation":
        docs = docs[:C4_EVAL_DOCUMENTS]
        split = f"validation[:{C4_EVAL_DOCUMENTS}]"
    return docs, split


def _join_dataset(source: str, role: Role, docs: list[str]) -> str:
    # SparseGPT joins wikitext2's train split with spaces and its test split with blank lines,
    # and C4's validation documents with spaces.
    if source == "wikitext2" and role == "evaluation":
        return "\n\n".join(docs)
    return " ".join(docs)


def _load_hf_split(
    path: str, name: str | None, data_files: dict[str, str] | None, split: str, *, source: str, param: str
) -> list[str]:
    """Load one split's text column, failing fast with ``DatasetUnavailable`` when offline.

    Without a hub, ``datasets`` retries for about half a minute before giving up; a short probe
    of the endpoint first turns that into a quick, clear error. With ``HF_DATASETS_OFFLINE=1`` (or
    ``HF_HUB_OFFLINE=1``) the probe is skipped and ``datasets`` reads its local cache only.
    """
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a declared dependency
        raise DatasetUnavailable(
            _unavailable(source, "the `datasets` package is not installed"), param=param
        ) from exc
    offline = bool(datasets.config.HF_HUB_OFFLINE)
    if not offline:
        endpoint = _hub_endpoint()
        if not _reachable(endpoint):
            raise DatasetUnavailable(
                _unavailable(source, f"the hub at {endpoint} cannot be reached"), param=param
            )
    try:
        ds = datasets.load_dataset(path, name, data_files=data_files, split=split)
    except Exception as exc:  # datasets raises ConnectionError, FileNotFoundError, ValueError, ...
        raise DatasetUnavailable(_unavailable(source, f"{type(exc).__name__}: {exc}"), param=param) from exc
    return [str(t) for t in ds["text"]]


def _unavailable(source: str, why: str) -> str:
    return (
        f"dataset {source!r} could not be reached ({why}); use the offline 'pydoc' text or upload "
        f"a .txt / .jsonl file instead"
    )


def _c4_calibration(tokenizer: Any, spec: TextSpec) -> tuple[torch.Tensor, dict[str, Any]]:
    """SparseGPT / Wanda's C4 sampling: a random document longer than seq_len, then a random window."""
    docs, split = _dataset_documents("c4", "calibration")
    windows = c4_windows(docs, lambda doc: tokenize(tokenizer, doc), spec.samples, spec.seq_len, spec.seed)
    # the shard is ~800 MB of text: hash the joined text piece by piece instead of building it
    sha, chars = _joined_sha256(docs, " ")
    info = TextInfo(source="c4", kind="dataset", sha256=sha, chars=chars, split=split)
    report = {
        **info.to_dict(),
        "documents": len(docs),
        "samples": spec.samples,
        "seq_len": spec.seq_len,
        "seed": spec.seed,
        "tokenizer": _tokenizer_name(tokenizer),
    }
    return windows, report


def _joined_sha256(docs: list[str], sep: str) -> tuple[str, int]:
    """sha256 and length of ``sep.join(docs)`` without materialising the joined string."""
    h = hashlib.sha256()
    for i, doc in enumerate(docs):
        if i:
            h.update(sep.encode("utf-8"))
        h.update(doc.encode("utf-8"))
    return h.hexdigest(), sum(len(d) for d in docs) + len(sep) * max(0, len(docs) - 1)


def c4_windows(
    docs: list[str], encode: Callable[[str], torch.Tensor], samples: int, seq_len: int, seed: int
) -> torch.Tensor:
    """Per sample: draw documents until one has more than ``seq_len`` tokens, then a window of it."""
    rng = random.Random(seed)
    out: list[torch.Tensor] = []
    max_draws = 100 * samples + 1000  # a corpus of short documents must fail, not spin forever
    draws = 0
    while len(out) < samples:
        draws += 1
        if draws > max_draws or not docs:
            raise UserError(
                f"found no document longer than seq_len={seq_len} tokens in c4 after {draws - 1} draws",
                param="calibration.seq_len",
            )
        ids = encode(docs[rng.randint(0, len(docs) - 1)])  # [T]
        if len(ids) <= seq_len:
            continue
        start = rng.randint(0, len(ids) - seq_len - 1)
        out.append(ids[start : start + seq_len])
    return torch.stack(out)  # [samples, seq_len]
