"""The default mode, started exactly as the README says: `spruce serve --data-dir DIR --port P`
(SQLite, filesystem broker, local artifacts, a real Celery worker process), a key from
`spruce keys create`, a tiny job over HTTP, a download, and a clean Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import TINY_SPEC, free_port, stop, wait_until

pytestmark = pytest.mark.integration

# The console script, as the README runs it.
SPRUCE = [str(Path(sys.executable).with_name("spruce"))]
ROOT = Path(__file__).resolve().parents[2]


def test_serve_end_to_end(tmp_path: Path, models: dict[str, Path]) -> None:
    data = tmp_path / "data"
    shutil.copytree(models["tiny"], data / "models" / "tiny")  # <data-dir>/models is an allowed root
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPRUCE_")}
    env.update({"SPRUCE_DEVICE": "cpu", "SPRUCE_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"})
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen(
            [*SPRUCE, "serve", "--data-dir", str(data), "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert serve.poll() is None, log.read_text()
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 90, "spruce serve")
        first = log.read_text()
        assert f"http://127.0.0.1:{port}" in first and "spk_" in first  # URL and a first key printed

        created = subprocess.run(
            [*SPRUCE, "keys", "create", "--team", "acme", "--name", "e2e", "--data-dir", str(data)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        key = created.stdout.strip().splitlines()[-1]
        assert key.startswith("spk_")
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert client.get("/v1/me").json()["team"] == "acme"

        r = client.post("/v1/jobs", json={**TINY_SPEC, "model": str(data / "models" / "tiny")})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]

        def done() -> dict[str, object] | None:
            job = client.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        job = wait_until(done, 180, "the job", interval=0.5)
        assert job["status"] == "succeeded", (job, (data / "logs" / "worker.log").read_text()[-3000:])

        arts = {a["name"]: a for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]}
        r = client.get(arts["report.json"]["url"])
        assert r.status_code == 200 and r.json()["sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)
        assert len(r.content) == arts["report.json"]["size"]
        assert (data / "artifacts" / "jobs" / job_id / "hf" / "config.json").is_file()

        # The CLI client against the same server.
        cli_env = {**env, "SPRUCE_URL": url, "SPRUCE_API_KEY": key}
        status = subprocess.run(
            [*SPRUCE, "status", job_id, "--no-wait"], cwd=ROOT, env=cli_env, capture_output=True, text=True
        )
        assert status.returncode == 0 and "succeeded" in status.stdout
        dl = subprocess.run(
            [*SPRUCE, "download", job_id, "--out", str(tmp_path / "dl"), "--only", "hf/"],
            cwd=ROOT,
            env=cli_env,
            capture_output=True,
            text=True,
        )
        assert dl.returncode == 0, dl.stderr
        assert (tmp_path / "dl" / "hf" / "config.json").read_bytes() == (
            data / "artifacts" / "jobs" / job_id / "hf" / "config.json"
        ).read_bytes()
    finally:
        code = stop(serve, signal.SIGINT, timeout=60)  # Ctrl-C
    assert code == 0, log.read_text()[-3000:]
    time.sleep(0.5)
    assert "Shutting down" in log.read_text()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"serve-{serve.pid}@" not in ps  # the worker stopped with it
