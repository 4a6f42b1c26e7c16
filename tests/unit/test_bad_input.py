"""Input that cannot run is refused at submission with a 4xx naming the field, never a 5xx or a
job that burns its retries: integer bounds, s3:// models without S3, bounded JSON parsing, and
hub ids that never read the worker's working directory."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spruce.api.validation import MAX_JSON_DEPTH, json_depth
from spruce.common.models import Dataset, Job
from spruce.common.refs import check_model_ref, is_hub_id
from spruce.common.settings import Settings
from spruce.core.errors import ModelNotFound, SpecError
from tests.unit.service import Service, with_field

pytestmark = pytest.mark.unit

BODY: dict[str, Any] = {
    "model": "smollm2-135m",
    "sparsity": 0.5,
    "method": {"pruner": "magnitude"},
    "calibration": {"source": "pydoc", "samples": 8, "seq_len": 64, "seed": 0},
}


@pytest.fixture()
def svc(tmp_path: Path) -> Iterator[Service]:
    service = Service(tmp_path)
    service.client.headers["Authorization"] = f"Bearer {service.key}"
    yield service


def _error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    return err


def test_an_event_cursor_beyond_the_id_column_is_a_422(svc: Service) -> None:
    job = svc.client.post("/v1/jobs", json=BODY).json()["id"]
    err = _error(svc.client.get(f"/v1/jobs/{job}/events", params={"after": 2**70}), 422)
    assert err["param"] == "after"
    r = svc.client.get(f"/v1/jobs/{job}/events", params={"after": 2**63 - 1})  # the largest id is fine
    assert r.status_code == 200 and r.json()["data"] == []


def test_an_s3_model_without_s3_is_refused_at_submission(svc: Service) -> None:
    err = _error(svc.client.post("/v1/jobs", json=with_field(BODY, "model", "s3://models/llama")), 422)
    assert err["param"] == "model" and "no S3 storage configured" in err["message"]
    assert svc.count(Job) == 0 and svc.queued_messages() == 0


def test_s3_counts_as_configured_with_s3_storage_or_model_roots() -> None:
    check_model_ref("s3://models/llama", Settings(storage="s3"))
    check_model_ref("s3://models/llama", Settings(model_s3_roots="s3://models"))  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="no S3 storage configured") as info:
        check_model_ref("s3://models/llama", Settings())
    assert info.value.param == "model"


def test_json_depth_counts_brackets_outside_strings() -> None:
    assert json_depth('{"text": "a"}') == 1
    assert json_depth('{"text": "[[[{{ \\" [[["}') == 1  # brackets in a string, an escaped quote
    assert json_depth('{"a": [[{"b": []}]]}') == 5
    assert json_depth("[" * 100_000 + "]" * 100_000) == 100_000
    assert json_depth('"plain"') == 0


def test_a_deeply_nested_jsonl_line_is_a_422(svc: Service) -> None:
    deep = '{"text": "x", "n": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
    r = svc.client.post("/v1/datasets", files={"file": ("deep.jsonl", deep.encode())})
    err = _error(r, 422)
    assert err["param"] == "file" and f"deeper than {MAX_JSON_DEPTH}" in err["message"]
    assert svc.count(Dataset) == 0
    ok = '{"text": "x", "n": ' + "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1) + "}\n"
    assert (
        json.loads(ok)
        and svc.client.post("/v1/datasets", files={"file": ("ok.jsonl", ok.encode())}).status_code == 201
    )


def test_hub_ids_are_told_apart_from_paths() -> None:
    assert is_hub_id("owner/name") and is_hub_id("data/signing.key") and is_hub_id("gpt2")
    for ref in ("smollm2-135m", "/models/x", "./x", "~/x", "x.gguf", "s3://b/k", "file:///x"):
        assert not is_hub_id(ref), ref


@pytest.fixture()
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, the hub unreachable, and a working directory holding a secret."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "cwd" / "data").mkdir(parents=True)
    (tmp_path / "cwd" / "data" / "signing.key").write_text("secret")
    (tmp_path / "cwd" / "owner" / "model").mkdir(parents=True)
    (tmp_path / "cwd" / "owner" / "model" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path / "cwd")
    return cache


def test_a_hub_id_never_reads_the_workers_directory(offline_hub: Path) -> None:
    from spruce.worker.hub import hub_folder

    answers = {}
    for ref in ("data/signing.key", "owner/model", "nosuch/model"):
        with pytest.raises(ModelNotFound) as info:
            hub_folder(ref)
        answers[ref] = str(info.value).replace(ref, "REF")
    assert os.path.exists("data/signing.key")  # the file is there, and nothing told
    assert len(set(answers.values())) == 1, answers


def test_a_cached_hub_model_resolves_to_its_snapshot(offline_hub: Path) -> None:
    from spruce.worker.hub import hub_folder

    repo = offline_hub / "models--owner--model"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "llama"}')
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    folder = hub_folder("owner/model")
    assert folder.is_absolute() and folder == snapshot and (folder / "config.json").is_file()


# Text sources: hub datasets accepted, local paths and fortunes-as-calibration refused.
@pytest.mark.parametrize(
    ("source", "status"),
    [
        ("HuggingFaceH4/ultrachat_200k?split=train_sft", 201),
        ("allenai/c4?config=en&split=validation&field=text", 201),
        ("/srv/data/private.parquet", 422),
        ("owner/name?split=x&../=y", 422),
        ("fortunes", 422),
    ],
)
def test_calibration_sources(svc: Service, source: str, status: int) -> None:
    r = svc.client.post("/v1/jobs", json=with_field(BODY, "calibration.source", source))
    assert r.status_code == status, r.text
    if status == 422:
        assert r.json()["error"]["param"] == "calibration.source"


def test_fortunes_evaluates(svc: Service) -> None:
    r = svc.client.post("/v1/jobs", json={**BODY, "evaluation": {"sources": ["pydoc", "fortunes"]}})
    assert r.status_code == 201, r.text
