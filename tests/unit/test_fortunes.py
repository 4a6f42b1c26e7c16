"""Text C: the fortunes files joined as BENCHMARK.md says, served as an evaluation-only source."""

from __future__ import annotations

import pytest
import torch

from spruce.core.data import evaluation_ids, load_text
from spruce.core.errors import SpecError
from spruce.core.fortunes import fortunes_text, join_fortunes
from spruce.core.spec import TextSpec
from tests.tiny import tiny_tokenizer


def _folder(tmp_path):
    folder = tmp_path / "fortunes"
    folder.mkdir()
    (folder / "zen").write_text("Simple is better.\n%\nFlat is better.\n%\n", encoding="utf-8")
    (folder / "art").write_text("A picture\n%\nis worth a thousand words\n", encoding="utf-8")
    (folder / "art.dat").write_bytes(b"\x00\x01")
    (folder / "art.u8").symlink_to(folder / "art")
    return folder


def test_files_join_sorted_without_separators_or_index_files(tmp_path):
    text = join_fortunes(_folder(tmp_path))
    assert text == "A picture\nis worth a thousand words\n\n\nSimple is better.\nFlat is better.\n"


def test_the_cached_text_is_read_without_fetching(tmp_path):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "fortunes.txt").write_text("cached fortunes", encoding="utf-8")
    assert fortunes_text(tmp_path) == "cached fortunes"


def test_fortunes_evaluates_on_the_whole_text(tmp_path, monkeypatch):
    monkeypatch.setenv("SPRUCE_CACHE_DIR", str(tmp_path))
    (tmp_path / "texts").mkdir()
    words = " ".join(f"word{i}" for i in range(300))
    (tmp_path / "texts" / "fortunes.txt").write_text(words, encoding="utf-8")
    tokenizer = tiny_tokenizer()
    ids, report = evaluation_ids(tokenizer, "fortunes")
    whole = torch.tensor(tokenizer(words, add_special_tokens=False)["input_ids"])
    assert torch.equal(ids, whole)  # no 60/40 cut: nothing of it was calibrated on
    assert report["kind"] == "fortunes" and report["split"] == "tokens[0:100%]"


def test_fortunes_is_refused_as_calibration():
    with pytest.raises(SpecError, match="evaluation text") as err:
        load_text("fortunes", role="calibration")
    assert err.value.param == "calibration.source"
    with pytest.raises(SpecError):
        from spruce.core.data import calibration_ids

        calibration_ids(tiny_tokenizer(), TextSpec(source="fortunes"))
