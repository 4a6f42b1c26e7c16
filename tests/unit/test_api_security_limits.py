"""Limits, each with a clear 4xx naming the field or the limit: body and upload sizes (413), upload
types and contents, sample counts and sequence lengths, model references (no arbitrary files, no
traversal, no foreign schemes, not the service's own bucket areas), artifact names."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spruce.api.jobs import safe_name
from spruce.common.models import Dataset, Job
from spruce.common.refs import check_model_ref
from spruce.common.settings import Settings
from spruce.core.errors import SpecError
from tests.unit.service import Service, with_field

pytestmark = pytest.mark.unit

BODY: dict[str, Any] = {
    "model": "smollm2-135m",
    "sparsity": 0.5,
    "method": {"pruner": "magnitude"},
    "calibration": {"source": "pydoc", "samples": 8, "seq_len": 64, "seed": 0},
    "evaluation": {"sources": ["pydoc"]},
    "experimental": {"evaluation": {"seq_len": 64, "max_windows": 2}},
}
MIB = 1 << 20


class Svc(Service):
    def __init__(self, tmp: Path, **overrides: Any) -> None:
        super().__init__(tmp, **overrides)
        self.client.headers["Authorization"] = f"Bearer {self.key}"  # every request is acme's

    def stored_datasets(self) -> list[Path]:
        root = self.settings.resolved_artifacts_dir / "datasets"
        return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.fixture()
def svc(tmp_path: Path) -> Iterator[Svc]:
    yield Svc(tmp_path, max_upload_mb=1)


def _error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    return err


# --- sizes --------------------------------------------------------------------------------------


def test_default_upload_limit_is_256_mib() -> None:
    assert Settings().max_upload_mb == 256


@pytest.mark.parametrize(
    "size",
    [
        MIB + 20,  # just over: the body passes the middleware (multipart slack), the copy stops it
        3 * MIB,  # far over: refused by its Content-Length before anything is read
    ],
)
def test_upload_over_the_limit_is_413_and_stores_nothing(svc: Svc, size: int) -> None:
    r = svc.client.post("/v1/datasets", files={"file": ("big.txt", b"a\n" * (size // 2))})
    err = _error(r, 413)
    assert err["code"] == "payload_too_large" and err["param"] == "file"
    assert "1 MiB" in err["message"] and "SPRUCE_MAX_UPLOAD_MB" in err["message"]
    assert svc.count(Dataset) == 0 and svc.stored_datasets() == []


def test_upload_without_content_length_is_cut_off_too(svc: Svc) -> None:
    """A chunked body declares no length: the limit is counted as it arrives."""
    boundary = "XyZ"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(40):  # 40 x 64 KiB = 2.5 MiB
            yield b"word " * 13107 + b"\n"
        yield f"\r\n--{boundary}--\r\n".encode()

    r = svc.client.post(
        "/v1/datasets",
        content=chunks(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    err = _error(r, 413)
    assert err["param"] == "file" and "SPRUCE_MAX_UPLOAD_MB" in err["message"]
    assert svc.count(Dataset) == 0 and svc.stored_datasets() == []


def test_upload_under_the_limit_is_accepted(svc: Svc) -> None:
    r = svc.client.post("/v1/datasets", files={"file": ("ok.txt", b"a line of text\n" * 1000)})
    assert r.status_code == 201, r.text
    assert svc.count(Dataset) == 1 and len(svc.stored_datasets()) == 1


def test_json_body_over_1_mib_is_413(svc: Svc) -> None:
    body = json.dumps({**BODY, "model": "x" * (MIB + 10)})
    r = svc.client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    err = _error(r, 413)
    assert err["param"] == "body" and "1024 KiB" in err["message"]
    assert svc.count(Job) == 0


# --- upload types and contents ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "content", "words"),
    [
        ("data.csv", b"a,b\n1,2\n", "only .txt and .jsonl"),
        ("model.safetensors", b"\x00\x01", "only .txt and .jsonl"),
        ("noext", b"text\n", "only .txt and .jsonl"),
        ("binary.txt", b"text\x00more\n", "NUL"),
        ("latin1.txt", "caf\xe9\n".encode("latin-1"), "not UTF-8"),
        ("utf16.txt", "text\n".encode("utf-16"), "not UTF-8"),
        ("empty.txt", b"\n\n  \n", "no text"),
        ("bad.jsonl", b'{"text": "a"}\nnot json\n', "line 2 is not valid JSON"),
        ("list.jsonl", b'["a", "b"]\n', "not a JSON object"),
        ("x" * 300 + ".txt", b"text\n", "at most 200"),
    ],
)
def test_upload_type_and_content_are_checked(svc: Svc, filename: str, content: bytes, words: str) -> None:
    err = _error(svc.client.post("/v1/datasets", files={"file": (filename, content)}), 422)
    assert err["param"] == "file" and words in err["message"], err
    assert svc.count(Dataset) == 0 and svc.stored_datasets() == []


# --- spec bounds --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value", "limit"),
    [
        ("calibration.samples", 65, "64"),
        ("calibration.seq_len", 257, "256"),
        ("experimental.evaluation.seq_len", 257, "256"),
        ("experimental.evaluation.max_windows", 11, "10"),
    ],
)
def test_sizes_are_bounded_by_settings(tmp_path: Path, param: str, value: int, limit: str) -> None:
    svc = Svc(tmp_path, max_samples=64, max_seq_len=256, max_eval_windows=10)
    err = _error(svc.client.post("/v1/jobs", json=with_field(BODY, param, value)), 422)
    assert err["param"] == param and f"limit of {limit}" in err["message"]
    assert (
        svc.client.post("/v1/jobs", json=with_field(BODY, param, value - 1)).status_code == 201
    )  # at the limit: fine


# --- model references ---------------------------------------------------------------------------


@pytest.fixture()
def roots(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "models"
    (root / "tiny").mkdir(parents=True)
    (root / "tiny" / "config.json").write_text("{}")
    (root / "escape").symlink_to("/etc")  # a link inside the root that leads out of it
    return {"root": root, "tiny": root / "tiny"}


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("/etc/passwd", "SPRUCE_MODEL_ROOTS"),
        ("{root}/../../../etc/passwd", "SPRUCE_MODEL_ROOTS"),
        ("{root}/tiny/../../outside", "SPRUCE_MODEL_ROOTS"),
        ("{root}/escape/passwd", "SPRUCE_MODEL_ROOTS"),  # symlinks are resolved first
        ("../models/tiny", "SPRUCE_MODEL_ROOTS"),  # relative paths never
        ("./tiny", "SPRUCE_MODEL_ROOTS"),
        ("~/.ssh/id_rsa", "SPRUCE_MODEL_ROOTS"),
        ("~nosuchuser/x", "SPRUCE_MODEL_ROOTS"),
        ("/etc/shadow.gguf", "SPRUCE_MODEL_ROOTS"),
        ("file:///etc/passwd", "file:// is not an accepted"),
        ("http://evil.example/model", "http:// is not an accepted"),
        ("hf://owner/name", "hf:// is not an accepted"),
        ("owner/../etc", "not a model reference"),
        ("owner/name\x00/etc/passwd", "NUL"),
        ("s3://bucket/models/../jobs/x", "'..'"),
        ("s3://bucket//models", "empty"),
        ("s3://Bad_Bucket/x", "not a valid s3"),
    ],
)
def test_model_refs_outside_what_is_allowed_are_refused(roots: dict[str, Path], ref: str, words: str) -> None:
    settings = Settings(data_dir=roots["root"].parent / "data", model_roots=[roots["root"]])
    with pytest.raises(SpecError) as info:
        check_model_ref(ref.format(root=roots["root"]), settings)
    assert info.value.param == "model" and words in info.value.message


def test_model_refs_that_are_allowed(roots: dict[str, Path]) -> None:
    settings = Settings(data_dir=roots["root"].parent / "data", model_roots=[roots["root"]])
    for ref in ("smollm2-135m", str(roots["tiny"]), "owner/name", "gpt2"):
        check_model_ref(ref, settings)
    check_model_ref("s3://bucket/models/tiny", settings.model_copy(update={"storage": "s3"}))


def test_s3_models_never_come_from_the_services_own_areas() -> None:
    s3 = Settings(storage="s3", s3_bucket="spruce", s3_prefix="prod")
    for ref in (
        "s3://spruce/prod/jobs/job_123/hf",  # another team's checkpoint
        "s3://spruce/prod/datasets/team_x/ds_1",  # another team's upload
        "s3://spruce/prod",  # above both: a copy of everything
        "s3://spruce",
    ):
        with pytest.raises(SpecError, match="this service's job and dataset files"):
            check_model_ref(ref, s3)
    check_model_ref("s3://spruce/prod/models/llama", s3)  # beside them: fine
    check_model_ref("s3://spruce/jobs/x", s3)  # another prefix's "jobs" is not this service's
    check_model_ref("s3://other/prod/jobs/x", s3)  # another bucket


def test_s3_model_roots_restrict_s3_models() -> None:
    s3 = Settings(model_s3_roots="s3://models/approved, s3://shared")  # type: ignore[arg-type]
    check_model_ref("s3://models/approved/llama", s3)
    check_model_ref("s3://shared/anything", s3)
    for ref in ("s3://models/approvedX/llama", "s3://models/other", "s3://elsewhere/approved/x"):
        with pytest.raises(SpecError, match="SPRUCE_MODEL_S3_ROOTS"):
            check_model_ref(ref, s3)


def test_the_api_names_the_field_for_a_bad_model(svc: Svc) -> None:
    err = _error(svc.client.post("/v1/jobs", json=with_field(BODY, "model", "file:///etc/passwd")), 422)
    assert err["param"] == "model" and "file://" in err["message"]
    assert svc.count(Job) == 0


# --- artifact names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "/etc/passwd", "hf/../../x", "a//b", ".", "a\\..\\b", "a\x00b", "x" * 501, ""],
)
def test_unsafe_artifact_names(name: str) -> None:
    assert not safe_name(name)


@pytest.mark.parametrize("name", ["report.json", "hf/config.json", "compact/model.safetensors", "a..b"])
def test_safe_artifact_names(name: str) -> None:
    assert safe_name(name)


@pytest.mark.parametrize(
    "path",
    ["..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "hf/..%2F..%2F..%2Fspruce.db", "..%5C..%5Cspruce.db"],
)
def test_traversal_in_artifact_names_reads_nothing(svc: Svc, path: str) -> None:
    job_id = svc.client.post("/v1/jobs", json=BODY).json()["id"]
    for suffix in ("", "?redirect=false"):
        r = svc.client.get(f"/v1/jobs/{job_id}/artifacts/{path}{suffix}")
        assert _error(r, 404)["code"] == "artifact_not_found"
        assert "root:" not in r.text and b"SQLite" not in r.content
    r = svc.client.get(f"/v1/downloads/{job_id}/{path}")
    assert r.status_code == 403 and "root:" not in r.text


def test_local_storage_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    from spruce.common.storage import LocalStorage, StorageError

    store = LocalStorage(tmp_path / "store")
    for key in ("../x", "/etc/passwd", "a/../../x", "a\\b", ""):
        with pytest.raises(StorageError):
            store.exists(key)
    assert os.listdir(tmp_path) == []
