"""Calibration / evaluation text: the benchmark recipe, files, datasets' error paths, caching."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from spruce.core import data
from spruce.core.data import batched, calibration_ids, evaluation_ids, load_text
from spruce.core.errors import DatasetUnavailable, SpecError, UserError
from spruce.core.spec import TextSpec
from tests.tiny import tiny_tokenizer

pytestmark = pytest.mark.unit

CJK = 0x4E00  # a run of distinct code points: with CharTokenizer every token marks its position


class CharTokenizer:
    """One token per character (its code point + ``shift``): positions in the text are visible."""

    def __init__(self, name: str = "chars", shift: int = 0) -> None:
        self.name_or_path = name
        self.shift = shift
        self.calls = 0

    def __call__(self, text: str, **kwargs: Any) -> dict[str, list[int]]:
        assert kwargs.get("add_special_tokens") is False
        self.calls += 1
        return {"input_ids": [ord(c) + self.shift for c in text]}

    def get_vocab(self) -> dict[str, int]:
        return {"<shift>": self.shift}

    def __len__(self) -> int:
        return 0x110000


@pytest.fixture(autouse=True)
def _fresh_cache():
    data.clear_cache()
    yield
    data.clear_cache()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _distinct_text(n: int) -> str:
    return "".join(chr(CJK + i) for i in range(n))


# --- pydoc: BENCHMARK.md's recipe ------------------------------------------------------------


def test_pydoc_calibration_reproduces_benchmark_recipe(tok):
    from pydoc_data.topics import topics

    # BENCHMARK.md, written out independently of core.data
    text = "\n\n".join(v for k, v in sorted(topics.items()))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    span = ids[: int(0.6 * len(ids))]
    offsets = torch.randint(0, len(span) - 64, (8,), generator=torch.Generator().manual_seed(3))
    expected = torch.tensor([span[o : o + 64] for o in offsets.tolist()], dtype=torch.int64)

    got, report = calibration_ids(tok, TextSpec(source="pydoc", samples=8, seq_len=64, seed=3))

    assert got.dtype == torch.int64 and got.shape == (8, 64)
    assert torch.equal(got, expected)
    assert report["source"] == "pydoc" and report["kind"] == "pydoc"
    assert report["split"] == "tokens[0:60%]"
    assert report["tokens"] == len(span) and report["total_tokens"] == len(ids)
    assert (report["samples"], report["seq_len"], report["seed"]) == (8, 64, 3)
    assert report["sha256"] == data.hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert report["chars"] == len(text)


def test_pydoc_evaluation_is_the_last_40_percent(tok):
    from pydoc_data.topics import topics

    text = "\n\n".join(v for k, v in sorted(topics.items()))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    got, report = evaluation_ids(tok, "pydoc")
    assert torch.equal(got, torch.tensor(ids[int(0.6 * len(ids)) :], dtype=torch.int64))
    assert report["split"] == "tokens[60%:100%]" and report["tokens"] == len(got)


def test_calibration_is_seeded(tok):
    a, _ = calibration_ids(tok, TextSpec(samples=4, seq_len=32, seed=0))
    b, _ = calibration_ids(tok, TextSpec(samples=4, seq_len=32, seed=0))
    c, _ = calibration_ids(tok, TextSpec(samples=4, seq_len=32, seed=1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_calibration_and_evaluation_never_overlap(tmp_path):
    chars = CharTokenizer()
    path = _write(tmp_path / "distinct.txt", _distinct_text(1000))
    cut = CJK + 600  # int(0.6 * 1000): every token id below it is calibration text
    calib, _ = calibration_ids(chars, TextSpec(source=str(path), samples=200, seq_len=50, seed=0))
    evals, _ = evaluation_ids(chars, str(path))
    assert int(calib.max()) < cut
    assert int(calib.max()) >= cut - 60  # windows do reach the end of the span: the bound is tight
    assert torch.equal(evals, torch.arange(cut, CJK + 1000))


# --- files ----------------------------------------------------------------------------------


def test_txt_file(tmp_path, tok):
    text = "The quick brown fox jumps over the lazy dog. " * 200
    path = _write(tmp_path / "notes.txt", text)
    loaded, info = load_text(str(path), role="calibration")
    assert loaded == text
    assert (info.kind, info.chars, info.split) == ("file", len(text), "tokens[0:60%]")
    ids, report = calibration_ids(tok, TextSpec(source=str(path), samples=3, seq_len=16))
    assert ids.shape == (3, 16) and report["kind"] == "file" and report["source"] == str(path)


def test_jsonl_custom_field(tmp_path):
    rows = [{"body": _distinct_text(300)[i * 100 : (i + 1) * 100], "id": i} for i in range(3)]
    path = _write(tmp_path / "docs.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    text, info = load_text(str(path), role="evaluation", field="body")
    assert text == "\n\n".join(r["body"] for r in rows)
    assert info.split == "tokens[60%:100%]"
    ids, report = calibration_ids(
        CharTokenizer(), TextSpec(source=str(path), samples=2, seq_len=8, field="body")
    )
    assert ids.shape == (2, 8) and report["field"] == "body"


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (['{"text": "a"}', '{"text": "b"}', "not json"], "line 3"),
        (['{"text": "a"}', '{"content": "b"}'], "line 2 has no 'text' field"),
        (['{"text": 5}'], "line 1"),
        (['["text"]'], "line 1 has no 'text' field"),
    ],
)
def test_bad_jsonl_line_is_named(tmp_path, lines, needle):
    path = _write(tmp_path / "bad.jsonl", "\n".join(lines))
    with pytest.raises(UserError) as err:
        load_text(str(path), role="calibration")
    assert needle in err.value.message
    assert err.value.param == "calibration.source"


def test_bad_encoding(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café ".encode("latin-1") * 10)
    with pytest.raises(UserError, match="not valid UTF-8"):
        load_text(str(path), role="calibration")


def test_missing_file(tmp_path):
    with pytest.raises(DatasetUnavailable) as err:
        load_text(str(tmp_path / "nope.txt"), role="calibration")
    assert "does not exist" in err.value.message and err.value.param == "calibration.source"


def test_unknown_source_name():
    with pytest.raises(SpecError) as err:
        load_text("wikitext103", role="evaluation")
    assert "wikitext103" in err.value.message and "pydoc" in err.value.message
    assert err.value.param == "evaluation.sources"


def test_too_short_text_says_how_many_tokens(tmp_path):
    path = _write(tmp_path / "short.txt", _distinct_text(100))  # 60 calibration tokens
    with pytest.raises(UserError) as err:
        calibration_ids(CharTokenizer(), TextSpec(source=str(path), samples=2, seq_len=64))
    assert "60 tokens" in err.value.message
    # 61 tokens in the span is the least that windows of 60 fit in (randint needs a non-empty range)
    ids, _ = calibration_ids(CharTokenizer(), TextSpec(source=str(path), samples=2, seq_len=59))
    assert ids.shape == (2, 59)


def test_empty_file(tmp_path):
    path = _write(tmp_path / "empty.txt", "  \n")
    with pytest.raises(UserError, match="no text"):
        load_text(str(path), role="calibration")


# --- datasets -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_wikitext2_unreachable_fails_fast(monkeypatch):
    # a closed local port: the probe is refused at once, as on a machine without hub access
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(data, "_hub_endpoint", lambda: "http://127.0.0.1:9")
    with pytest.raises(DatasetUnavailable) as err:
        load_text("wikitext2", role="calibration")
    assert "could not be reached" in err.value.message and "pydoc" in err.value.message
    assert err.value.param == "calibration.source"


@pytest.mark.timeout(60)
def test_offline_datasets_mode_fails_fast_without_a_cache(monkeypatch, tmp_path):
    # HF_DATASETS_OFFLINE=1 skips the probe and lets `datasets` look in its (here empty) cache
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(data, "_hub_endpoint", lambda: pytest.fail("the probe must be skipped offline"))
    with pytest.raises(DatasetUnavailable, match="could not be reached"):
        evaluation_ids(CharTokenizer(), "c4")


def _fake_hub(monkeypatch, splits: dict[tuple[str, str], list[str]]) -> list[tuple[str, str]]:
    asked: list[tuple[str, str]] = []

    def load(path, name, data_files, split, *, source, param):
        asked.append((path, split))
        return splits[(path, split)]

    monkeypatch.setattr(data, "_load_hf_split", load)
    return asked


def test_wikitext2_splits_and_paper_sampling(monkeypatch):
    train = [_distinct_text(400)[i * 100 : (i + 1) * 100] for i in range(4)]
    test = ["x" * 50, "y" * 50]
    asked = _fake_hub(monkeypatch, {("wikitext", "train"): train, ("wikitext", "test"): test})
    chars = CharTokenizer()

    ids, report = calibration_ids(chars, TextSpec(source="wikitext2", samples=5, seq_len=20, seed=7))
    stream = torch.tensor([ord(c) for c in " ".join(train)])  # SparseGPT: train joined by spaces
    rng = random.Random(7)
    starts = [rng.randint(0, len(stream) - 20 - 1) for _ in range(5)]
    assert torch.equal(ids, torch.stack([stream[s : s + 20] for s in starts]))
    assert (report["kind"], report["split"]) == ("dataset", "train")

    evals, ereport = evaluation_ids(chars, "wikitext2")
    assert torch.equal(evals, torch.tensor([ord(c) for c in "\n\n".join(test)]))
    assert ereport["split"] == "test"
    assert asked == [("wikitext", "train"), ("wikitext", "test")]


def test_c4_samples_long_documents_only(monkeypatch):
    docs = ["a" * 5, _distinct_text(40), "b" * 3]
    _fake_hub(monkeypatch, {("allenai/c4", "train"): docs})
    ids, report = calibration_ids(CharTokenizer(), TextSpec(source="c4", samples=6, seq_len=16, seed=0))
    assert ids.shape == (6, 16)
    assert int(ids.min()) >= CJK  # every window comes from the one document longer than 16 tokens
    assert report["documents"] == 3 and report["split"] == "train"


def test_c4_without_long_documents_fails_instead_of_looping():
    with pytest.raises(UserError, match="no document longer than seq_len=16"):
        data.c4_windows(["short"] * 3, lambda d: torch.tensor([ord(c) for c in d]), 2, 16, 0)


# --- cache and batching -----------------------------------------------------------------------


def test_pydoc_is_tokenized_once_per_tokenizer():
    chars = CharTokenizer()
    calibration_ids(chars, TextSpec(samples=2, seq_len=16))
    evaluation_ids(chars, "pydoc")
    assert chars.calls == 1


def test_cache_never_mixes_tokenizers_that_share_a_name():
    a, b = CharTokenizer("same", shift=0), CharTokenizer("same", shift=1)
    ea, _ = evaluation_ids(a, "pydoc")
    eb, _ = evaluation_ids(b, "pydoc")
    assert b.calls == 1
    assert torch.equal(eb, ea + 1)


def test_cache_is_bounded(tmp_path):
    chars = CharTokenizer()
    for i in range(data._CACHE_SIZE + 3):
        evaluation_ids(chars, str(_write(tmp_path / f"t{i}.txt", f"text number {i} " * 10)))
    assert len(data._cache) == data._CACHE_SIZE


def test_evaluation_ids_are_a_copy():
    chars = CharTokenizer()
    first, _ = evaluation_ids(chars, "pydoc")
    first.zero_()
    again, _ = evaluation_ids(chars, "pydoc")
    assert int(again.abs().sum()) > 0 and chars.calls == 1


def test_batched():
    ids = torch.arange(70).reshape(7, 10)
    parts = batched(ids, 3)
    assert [p.shape[0] for p in parts] == [3, 3, 1]
    assert torch.equal(torch.cat(parts), ids)
    with pytest.raises(ValueError):
        batched(ids, 0)


def test_c4_report_hashes_the_joined_documents(monkeypatch):
    docs = ["é" * 3, _distinct_text(40), "b"]
    _fake_hub(monkeypatch, {("allenai/c4", "train"): docs})
    _, report = calibration_ids(CharTokenizer(), TextSpec(source="c4", samples=1, seq_len=16))
    text, info = load_text("c4", role="calibration")
    assert text == " ".join(docs)
    assert (
        (report["sha256"], report["chars"])
        == (info.sha256, info.chars)
        == (
            data.hashlib.sha256(text.encode()).hexdigest(),
            len(text),
        )
    )
