"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (schemathesis).

Every operation in the app's OpenAPI document gets generated requests, valid and invalid, sent
in-process to an app on the real Postgres, with a valid team key. Each response must: not be a
5xx, use a status code the schema documents for that operation, match the documented body
schema, content type and headers, and a request that breaks the schema must get a 4xx.

No worker runs: the broker is kombu's filesystem transport, which accepts the submitted jobs'
messages into a folder where they simply stay queued. Jobs in every state (one with artifacts in
storage) and an uploaded dataset exist first, and the fuzzer draws path parameters from their
ids half the time, so the found-it branches run too, not only the 404s.

The schema object is built at collection time, as schemathesis' pytest plugin requires (its
fixture-based loader does not work with pytest 9). Building it only renders the OpenAPI document:
the app makes no connection until a request arrives. The ids and the key it refers to are
random values chosen here and written to the database by the ``target`` fixture; the key is
made there and sent with every request.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.specs.openapi import checks as oas
from sqlalchemy.orm import Session

from spruce.api.app import create_app
from spruce.common.db import session_scope, upgrade
from spruce.common.jobs import add_event, set_status
from spruce.common.keys import create_key
from spruce.common.models import Artifact, Dataset, Job, new_id
from spruce.common.settings import Settings
from spruce.common.states import JobStatus

pytestmark = pytest.mark.integration

# The whole file must stay well under two minutes on a busy 2-core CI machine: about 20 s at 50
# (65 s at 300); SPRUCE_FUZZ_EXAMPLES=1000 fuzzes deeper by hand.
MAX_EXAMPLES = int(os.environ.get("SPRUCE_FUZZ_EXAMPLES", "50"))

CHECKS: list[CheckFunction] = [
    not_a_server_error,  # no 5xx, whatever the input
    oas.status_code_conformance,  # every status code is documented for its operation
    oas.content_type_conformance,
    oas.response_schema_conformance,  # the body matches the documented schema
    oas.response_headers_conformance,
    oas.negative_data_rejection,  # a request that breaks the schema gets a 4xx
]

JOB_IDS = {status: new_id("job") for status in JobStatus}
DATASET_ID = new_id("ds")
ARTIFACTS = ["report.json", "hf/config.json"]
SPEC: dict[str, Any] = {
    "model": "smollm2-135m",
    "sparsity": 0.5,
    "method": {"pruner": "wanda"},
    "calibration": {"source": "pydoc", "samples": 4, "seq_len": 32, "seed": 0},
}

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"mode": "all"},
        "dictionaries": {
            "jobs": {"values": list(JOB_IDS.values())},
            "artifacts": {"values": ARTIFACTS},
            "datasets": {"values": [DATASET_ID]},
        },
        "parameters": {
            "path.job_id": {"dictionary": "jobs", "probability": 0.5},
            "path.name": {"dictionary": "artifacts", "probability": 0.5},
            "path.dataset_id": {"dictionary": "datasets", "probability": 0.5},
            "query.after": {"dictionary": "jobs", "probability": 0.3},
        },
    }
)


def _document() -> dict[str, Any]:
    # Any settings render the same document; nothing is connected to for it.
    return create_app(Settings(data_dir=Path("unused"))).openapi()


schema = schemathesis.openapi.from_dict(_document(), config=CONFIG)


def _seed_jobs(s: Session, team_id: str) -> None:
    """One job in each status, with the events the transitions write."""
    for status, job_id in JOB_IDS.items():
        job = Job(id=job_id, team_id=team_id, submitted_by="ci", spec=SPEC)
        s.add(job)
        s.flush()
        add_event(s, job.id, "status", "job created", data={"to": "queued"})
        if status in (JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED):
            set_status(s, job, JobStatus.RUNNING)
        if status == JobStatus.SUCCEEDED:
            set_status(s, job, status, results={"dry_run": True})
        elif status == JobStatus.FAILED:
            set_status(s, job, status, error=("internal_error", "boom"))
        elif status == JobStatus.CANCELLED:
            set_status(s, job, status)


def _seed(url: str, storage_root: Path) -> str:
    """A new team with jobs, the succeeded job's artifacts (rows and files) and a dataset; its key."""
    with session_scope(url) as s:
        new = create_key(s, f"fuzz-{secrets.token_hex(4)}", "ci")
        team_id = new.row.team_id
        _seed_jobs(s, team_id)
        done = JOB_IDS[JobStatus.SUCCEEDED]
        data = b'{"ok": true}\n'
        for name in ARTIFACTS:
            key = f"jobs/{done}/{name}"
            (storage_root / key).parent.mkdir(parents=True, exist_ok=True)
            (storage_root / key).write_bytes(data)
            sha = hashlib.sha256(data).hexdigest()
            s.add(Artifact(job_id=done, name=name, size=len(data), sha256=sha, storage_key=key))
        text = b"hello\n"
        key = f"datasets/{team_id}/{DATASET_ID}/{DATASET_ID}.txt"
        (storage_root / key).parent.mkdir(parents=True, exist_ok=True)
        (storage_root / key).write_bytes(text)
        s.add(
            Dataset(
                id=DATASET_ID,
                team_id=team_id,
                name="notes",
                filename="notes.txt",
                format="txt",
                size=len(text),
                sha256=hashlib.sha256(text).hexdigest(),
                records=1,
                storage_key=key,
            )
        )
    return new.secret


@dataclass(frozen=True)
class Target:
    app: FastAPI
    headers: dict[str, str]  # a valid key of the team that owns the seeded ids
    settings: Settings


@pytest.fixture(scope="module")
def target(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Target:
    # broker_url "": the filesystem transport under data_dir, so submissions need no worker.
    svc = Settings(
        data_dir=tmp_path_factory.mktemp("fuzz"),
        database_url=pg_url,
        broker_url="",
        storage="local",
        rate_limit_per_minute=0,  # thousands of requests from one key; limits are tested elsewhere
    )
    upgrade(pg_url)
    key = _seed(pg_url, svc.resolved_artifacts_dir)
    app = create_app(svc)
    assert app.openapi() == schema.raw_schema  # the app under test serves the document we fuzz from
    return Target(app=app, headers={"Authorization": f"Bearer {key}"}, settings=svc)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,  # a busy CI machine is slow; timings are not what this test checks
    database=None,  # no .hypothesis/ folder in the checkout
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case: Any, target: Target) -> None:
    response = case.call_and_validate(app=target.app, headers=target.headers, checks=CHECKS)
    # Both are documented, so the checks above would pass them: a refused key or a rate limit
    # would silently turn the whole run into a test of the auth layer.
    assert response.status_code not in (401, 429), response.text


# Found by hand, not by the fuzzer (its multipart bodies rarely carry a NUL): Postgres text
# columns cannot hold one, so a NUL that reaches an INSERT is a 500. Each must be refused first.
NUL_UPLOADS = {
    "name field": (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nhello\n\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="name"\r\n\r\na\x00b\r\n--XyZ--\r\n'
    ),
    "file name": (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a\x00b.txt"\r\n\r\n'
        b"hello\n\r\n--XyZ--\r\n"
    ),
}


@pytest.mark.parametrize("where", list(NUL_UPLOADS))
def test_nul_characters_in_an_upload_are_refused(target: Target, where: str) -> None:
    headers = {**target.headers, "Content-Type": "multipart/form-data; boundary=XyZ"}
    with TestClient(target.app, raise_server_exceptions=False) as client:
        r = client.post("/v1/datasets", content=NUL_UPLOADS[where], headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] in ("name", "file")


# The bad input of issue 27 ("Why", items 4 and 6), each a 4xx at submission on Postgres: none
# may reach a worker to fail there as a system fault, and none may be a 500. This app has no S3.
DEEP = 100_000


def _job(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {**SPEC, "calibration": dict(SPEC["calibration"])}
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = body
        for p in parents:
            node = node[p]
        node[leaf] = value
    return body


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (_job(calibration__seed=2**70), "calibration.seed"),  # was 201, then 3 attempts of OverflowError
        (_job(model="s3://models/llama"), "model"),  # was 201, then 3 attempts of "no credentials"
        (_job(model="file:///app/data/signing.key"), "model"),
    ],
    ids=["seed 2^70", "s3 model without S3", "file url"],
)
def test_a_job_that_cannot_run_is_refused_at_submission(
    target: Target, body: dict[str, Any], param: str
) -> None:
    with TestClient(target.app, raise_server_exceptions=False) as client:
        r = client.post("/v1/jobs", json=body, headers=target.headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param


def test_an_event_cursor_past_the_id_column_is_a_422(target: Target) -> None:
    with TestClient(target.app, raise_server_exceptions=False) as client:
        job = client.post("/v1/jobs", json=_job(), headers=target.headers).json()[
            "id"
        ]  # the fuzzer may delete the seeded ones
        r = client.get(f"/v1/jobs/{job}/events", params={"after": 2**70}, headers=target.headers)
        assert r.status_code == 422 and r.json()["error"]["param"] == "after", r.text
        r = client.get(f"/v1/jobs/{job}/events", params={"after": 2**63 - 1}, headers=target.headers)
        assert r.status_code == 200 and r.json()["data"] == []


@pytest.mark.parametrize("where", ["jsonl upload", "job body"])
def test_deeply_nested_json_is_a_4xx(target: Target, where: str) -> None:
    nested = "[" * DEEP + "]" * DEEP
    with TestClient(target.app, raise_server_exceptions=False) as client:
        if where == "jsonl upload":
            line = f'{{"text": "hello", "n": {nested}}}\n'.encode()
            r = client.post("/v1/datasets", files={"file": ("deep.jsonl", line)}, headers=target.headers)
            assert r.status_code == 422 and r.json()["error"]["param"] == "file", r.text
        else:
            body = f'{{"model": "smollm2-135m", "sparsity": 0.5, "method": {nested}}}'
            headers = {**target.headers, "Content-Type": "application/json"}
            r = client.post("/v1/jobs", content=body, headers=headers)
            assert 400 <= r.status_code < 500, r.text


def test_a_hub_id_is_accepted_alike_whatever_the_servers_disk_holds(target: Target) -> None:
    """The API answers from the reference alone: a name that is a file beside the service and
    one that is nothing get the same answer (the worker resolves both in the hub cache only)."""
    with TestClient(target.app, raise_server_exceptions=False) as client:
        answers = [
            client.post("/v1/jobs", json=_job(model=ref), headers=target.headers)
            for ref in ("api/app.py", "api/nosuch.py")  # the first exists in the working directory
        ]
    assert [a.status_code for a in answers] == [201, 201], [a.text for a in answers]


def test_the_broker_down_answer_names_no_server_path(target: Target, tmp_path: Path) -> None:
    """A filesystem broker whose folder is unusable: whatever the answer, it is not a 500 and it
    carries no server-side path or exception text (the log has them)."""
    settings = target.settings.model_copy(update={"data_dir": tmp_path / "data"})
    settings.broker_folder.parent.mkdir(parents=True)
    settings.broker_folder.write_text("not a folder")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        r = client.post("/v1/jobs", json=_job(), headers=target.headers)
    assert r.status_code in (201, 503), r.text
    assert str(tmp_path) not in r.text and "Error" not in r.text, r.text
