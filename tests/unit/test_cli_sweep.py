"""`spruce sweep` against the in-process API: the body it sends, its errors, and the table and
Pareto front it prints once the children ended; and `spruce submit --json`, which prints the
created job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from spruce.cli import client as cli_client
from spruce.cli import sweep as cli_sweep
from spruce.cli.main import main
from spruce.client import Client
from spruce.common.db import session_scope
from spruce.common.jobs import set_status
from spruce.common.models import Job
from spruce.common.states import JobStatus
from tests.unit.service import Service

pytestmark = pytest.mark.unit


@pytest.fixture()
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Service:
    svc = Service(tmp_path)

    def client(url: str | None, key: str | None) -> Client:
        c = Client("http://testserver", key or svc.key, retries=0)
        c.http = svc.client  # Starlette's TestClient is an httpx.Client bound to the app
        c.http.headers["Authorization"] = f"Bearer {key or svc.key}"
        return c

    monkeypatch.setattr(cli_sweep, "Client", client)
    monkeypatch.setattr(cli_client, "Client", client)
    return svc


def test_sweep_submits_one_job_per_target_and_pruner(
    svc: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sweep", "--model", "smollm2-135m", "--targets", "0.5, 2:4", "--pruners", "wanda,magnitude",
            "--calib", "pydoc", "--samples", "8", "--eval", "pydoc", "--json"]  # fmt: skip
    assert main(argv) == 0
    sweep = json.loads(capsys.readouterr().out)
    assert [(r["target"], r["pruner"]) for r in sweep["table"]] == [
        (0.5, "wanda"), (0.5, "magnitude"), ("2:4", "wanda"), ("2:4", "magnitude")
    ]  # fmt: skip
    assert sweep["calibration"]["samples"] == 8 and sweep["text"] == "pydoc"
    with session_scope(svc.url) as s:
        specs = [s.get(Job, j).spec for j in sweep["jobs"]]  # type: ignore[union-attr]
    assert all(spec["model"] == "smollm2-135m" for spec in specs)
    assert main(["sweep", "--model", "smollm2-135m", "--targets", "0.5"]) == 0
    assert capsys.readouterr().out.strip().startswith("sw_")


def test_errors_name_the_field(svc: Service, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "--model", "smollm2-135m", "--targets", "0.5,7:3"]) == 2
    assert "targets[1]" in capsys.readouterr().err
    assert main(["sweep", "--targets", "0.5"]) == 2
    assert "--model is required" in capsys.readouterr().err


def test_report_prints_the_table_the_front_and_best_within(svc: Service) -> None:
    created = svc.client.post(
        "/v1/sweeps",
        json={
            "spec": {"model": "smollm2-135m", "evaluation": {"sources": ["pydoc"]}},
            "targets": [0.5, 0.6, 0.7],
        },
        headers=svc.h(),
    ).json()
    figures = {0: (0.5, 10.5), 1: (0.6, 13.0), 2: (0.7, 12.0)}  # the 0.6 row is dominated
    with session_scope(svc.url) as s:
        for i, job_id in enumerate(created["jobs"]):
            job = s.get(Job, job_id)
            assert job is not None
            set_status(s, job, JobStatus.RUNNING, "started")
            results: dict[str, Any] = {
                "sparsity": {"overall": figures[i][0]},
                "perplexity": {"dense": {"pydoc": 10.0}, "sparse": {"pydoc": figures[i][1]}},
                "sizes": {"hf_bytes": 2_000_000, "compact_bytes": 1_200_000},
            }
            set_status(s, job, JobStatus.SUCCEEDED, "done", results=results)
    client = cli_sweep.Client(None, None)
    text = cli_sweep.report(cli_sweep._read(client, created["id"], 0.1))
    lines = text.splitlines()
    assert lines[0] == f"sweep {created['id']}: succeeded (3/3 jobs)"
    assert lines[2].split()[:5] == ["target", "pruner", "preset", "status", "sparsity"]
    assert lines[3].split()[:5] == ["0.5", "-", "-", "succeeded", "0.5000"] and "10.500" in lines[3]
    front = lines[lines.index("Pareto front (sparsity up, perplexity on pydoc down):") + 2 :][:2]
    assert [line.split()[0] for line in front] == ["0.5", "0.7"]
    assert (
        lines[-1] == f"sparsest within 10% of dense: target 0.5 (sparsity 0.5000, job {created['jobs'][0]})"
    )


def test_submit_json_prints_the_created_job(svc: Service, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["submit", "--model", "smollm2-135m", "--sparsity", "2:4", "--calib", "pydoc", "--samples", "8"]
    assert main([*argv, "--json"]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["object"] == "job" and job["status"] == "queued" and job["id"].startswith("job_")
    assert job["spec"]["sparsity"] == "2:4" and job["spec"]["calibration"]["samples"] == 8
    listed = svc.client.get(f"/v1/jobs/{job['id']}", headers=svc.h()).json()
    assert listed["spec"] == job["spec"]
    assert main(argv) == 0  # without --json: the id alone
    assert capsys.readouterr().out.strip().startswith("job_")


def test_delete_removes_the_job(svc: Service, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "--model", "smollm2-135m", "--sparsity", "0.5", "--calib", "pydoc"]) == 0
    job_id = capsys.readouterr().out.strip()
    assert main(["delete", job_id]) == 0
    assert capsys.readouterr().out.strip() == f"{job_id} deleted"
    assert svc.client.get(f"/v1/jobs/{job_id}", headers=svc.h()).status_code == 404
    assert main(["delete", job_id]) == 2  # gone: the API's 404, as an error line
    assert capsys.readouterr().err.startswith("error: ")
