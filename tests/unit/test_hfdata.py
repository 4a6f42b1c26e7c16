"""Any datasets source: hub-style refs parsed, local folders and files read, chats rendered."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset, DatasetDict

import spruce.core.data as data
from spruce.core.data import calibration_ids, evaluation_ids
from spruce.core.errors import DatasetUnavailable, SpecError, UserError
from spruce.core.hfdata import DatasetRef, is_dataset_source, render_chat
from spruce.core.spec import TextSpec
from tests.tiny import tiny_tokenizer

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
WORDS = " ".join(f"word{i}" for i in range(200))


def _chats(n: int = 6) -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": f"question {i} {WORDS}"}, {"role": "assistant", "content": "answer"}]
        for i in range(n)
    ]


def _calib(source: str, tokenizer=None):
    spec = TextSpec(source=source, samples=3, seq_len=16, seed=0)
    return calibration_ids(tokenizer or tiny_tokenizer(), spec)


def test_refs_parse_their_options():
    ref = DatasetRef.parse("HuggingFaceH4/ultrachat_200k?split=train_sft&config=default", param="p")
    assert (ref.path, ref.split, ref.config, ref.field) == (
        "HuggingFaceH4/ultrachat_200k",
        "train_sft",
        "default",
        None,
    )
    with pytest.raises(SpecError, match="unknown dataset option 'splt'") as err:
        DatasetRef.parse("a/b?splt=x", param="calibration.source")
    assert err.value.param == "calibration.source"
    assert is_dataset_source("owner/name") and is_dataset_source("x.parquet?split=a")
    assert not is_dataset_source("pydocs") and not is_dataset_source("notes.txt")


def test_a_saved_folder_with_a_text_column_calibrates(tmp_path):
    DatasetDict({"train": Dataset.from_dict({"text": [WORDS] * 4})}).save_to_disk(tmp_path / "saved")
    ids, report = _calib(str(tmp_path / "saved"))
    assert ids.shape == (3, 16) and report["kind"] == "hf" and report["field"] == "text"
    assert report["documents"] == 4 and report["rendering"] == "text"


def test_chat_records_go_through_the_chat_template(tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = TEMPLATE
    Dataset.from_dict({"messages": _chats()}).to_parquet(str(tmp_path / "chat.parquet"))
    ids, report = _calib(str(tmp_path / "chat.parquet"), tokenizer)
    assert report["field"] == "messages" and report["rendering"] == "chat_template"
    rendered = "\n\n".join(render_chat(c, tokenizer) for c in _chats())
    assert rendered.startswith("<user>question 0") and report["chars"] == len(rendered)
    whole = torch.tensor(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert any(torch.equal(ids[0], whole[o : o + 16]) for o in range(len(whole) - 16))


def test_a_tokenizer_without_a_template_joins_roles(tmp_path):
    Dataset.from_dict({"messages": _chats(2)}).to_json(str(tmp_path / "chat.json"))
    _, report = _calib(str(tmp_path / "chat.json"))
    assert report["rendering"] == "role_lines"
    assert render_chat(_chats(1)[0], tiny_tokenizer()).startswith("user: question 0")


def test_evaluation_reads_the_whole_split(tmp_path):
    Dataset.from_dict({"body": [WORDS, WORDS]}).save_to_disk(tmp_path / "ev")
    ids, report = evaluation_ids(tiny_tokenizer(), f"{tmp_path / 'ev'}?field=body")
    expected = tiny_tokenizer()(f"{WORDS}\n\n{WORDS}", add_special_tokens=False)["input_ids"]
    assert ids.tolist() == expected and report["field"] == "body"


def test_bad_sources_fail_clearly(tmp_path, monkeypatch):
    Dataset.from_dict({"body": [WORDS]}).save_to_disk(tmp_path / "d")
    with pytest.raises(UserError, match="no 'text' or 'messages' column"):
        _calib(str(tmp_path / "d"))
    with pytest.raises(DatasetUnavailable, match="does not exist"):
        _calib(str(tmp_path / "missing.parquet"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("spruce.core.hfdata.hub_endpoint", lambda: "http://127.0.0.1:9")
    with pytest.raises(DatasetUnavailable, match="cannot be reached") as err:
        _calib("someone/some_set?split=train")
    assert err.value.param == "calibration.source"
    assert data._kind("someone/some_set", "calibration") == "hf"
