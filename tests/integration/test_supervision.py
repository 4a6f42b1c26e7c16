"""`spruce serve` supervises its worker (SQLite, the filesystem broker, local artifacts; real
processes): the worker killed with SIGKILL mid-job is restarted while /healthz keeps answering,
the job resumes from its checkpoint and ends with the weights of an uninterrupted run; a broker
folder that goes missing for a while makes /readyz say so and the worker waits it out; and no
worker outlives its serve, whether serve is stopped with SIGTERM or killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load_file

from tests.integration.conftest import ROOT, TINY_SPEC, free_port, stop, wait_until
from tests.integration.fleet import FAST, TERMINAL, slow_spec
from tests.tiny import tiny_model_dir

pytestmark = pytest.mark.integration

SPRUCE = [sys.executable, "-m", "spruce.cli.main"]  # the `spruce` command, run from the checkout
LAYERS = 6


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    data: Path
    log: Path
    client: httpx.Client

    @property
    def worker_log(self) -> Path:
        return self.data / "logs" / "worker.log"

    def worker_pids(self) -> list[int]:
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True
        )
        return [int(p) for p in out.stdout.split()]

    def worker(self) -> int:
        pids = wait_until(self.worker_pids, 30, "serve's worker process")
        assert len(pids) == 1, pids
        return int(pids[0])

    def submit(self, spec: dict[str, Any]) -> str:
        r = self.client.post("/v1/jobs", json=spec)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.client.get(f"/v1/jobs/{job_id}").json()
        return body

    def wait(self, job_id: str, until: Any, what: str, timeout: float = 300) -> dict[str, Any]:
        # Generous: a deadline for a hung test on a busy machine, not a timing target.
        def check() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if until(job) else None

        try:
            return dict(wait_until(check, timeout, what, interval=0.1))
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.job(job_id)}\n{self.logs()}") from None

    def weights(self, job_id: str) -> dict[str, torch.Tensor]:
        return load_file(self.data / "artifacts" / "jobs" / job_id / "hf" / "model.safetensors")

    def logs(self) -> str:
        text = self.worker_log.read_text()[-4000:] if self.worker_log.exists() else ""
        return f"--- serve\n{self.log.read_text()[-4000:]}\n--- worker\n{text}"


@contextmanager
def serving(tmp: Path, models: dict[str, Path]) -> Iterator[Served]:
    """`spruce serve` on a fresh data folder, fast failure detection, a key for team acme."""
    from spruce.common.db import session_scope, upgrade
    from spruce.common.keys import create_key

    data = tmp / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPRUCE_")}
    env.update(FAST)
    env.update({"SPRUCE_MODEL_ROOTS": str(models["tiny"].parent), "SPRUCE_CACHE_DIR": str(tmp / "cache")})
    url = f"sqlite:///{(data / 'spruce.db').resolve()}"
    upgrade(url)
    with session_scope(url) as session:
        key = create_key(session, "acme", "ci").secret
    port = free_port()
    log = tmp / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*SPRUCE, "serve", "--data-dir", str(data), "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    served = Served(proc, base, data, log, client)
    try:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                ready = httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
            return ready and served.worker_log.exists() and b" ready." in served.worker_log.read_bytes()

        wait_until(up, 120, "spruce serve and its worker")
        yield served
    finally:
        client.close()
        stop(proc, signal.SIGKILL)
        if os.environ.get("SPRUCE_TEST_SHOW_LOGS"):
            print(served.logs())


class Poller:
    """GET /healthz every 50 ms in a thread; counts the answers that were not a 200."""

    def __init__(self, url: str) -> None:
        self.url, self.ok, self.failed = url, 0, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.wait(0.05):
                try:
                    r = client.get(f"{self.url}/healthz")
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failed.append(r.status_code)
                except httpx.HTTPError as exc:
                    self.failed.append(repr(exc))


def gone(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (a zombie counts: it runs nothing) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def test_killed_worker_is_restarted_and_its_job_resumes(tmp_path: Path, models: dict[str, Path]) -> None:
    model = tiny_model_dir(models["tiny"].parent, "llama", layers=LAYERS, hidden=128)
    spec = slow_spec(model)
    spec["calibration"] = {**spec["calibration"], "samples": 8}  # quicker; still six layers to kill in
    with serving(tmp_path, models) as served:
        reference = served.submit(spec)
        assert (
            served.wait(reference, lambda j: j["status"] in TERMINAL, "the reference run")["status"]
            == "succeeded"
        )

        job_id = served.submit(spec)
        with Poller(served.url) as health:
            served.wait(job_id, lambda j: j["stage"] == "prune" and (j["layer"] or 0) >= 1, "layer 1 done")
            first = served.worker()
            os.kill(first, signal.SIGKILL)
            killed = time.monotonic()
            resumed = served.wait(job_id, lambda j: j["resumes"] >= 1, "the resumed attempt")
            back = time.monotonic() - killed
            job = served.wait(job_id, lambda j: j["status"] in TERMINAL, "the job's end")
        assert job["status"] == "succeeded", (job, served.logs())
        assert (job["attempts"], job["resumes"]) == (2, 1) and resumed["attempts"] == 2
        assert health.failed == [] and health.ok > 0  # /healthz answered all along
        second = served.worker()
        assert second != first and "restart 1 in" in served.log.read_text()
        events = served.client.get(f"/v1/jobs/{job_id}/events").json()["data"]
        assert any("re-queued" in e["message"] and "exited (code -9)" in e["message"] for e in events)
        # The weights of the uninterrupted run, tensor for tensor.
        got, want = served.weights(job_id), served.weights(reference)
        assert got.keys() == want.keys() and [k for k in want if not torch.equal(got[k], want[k])] == []
        print(f"kill -9 -> resumed from the checkpoint in {back:.1f} s; /healthz answered {health.ok} times")

        # The broker's queue folder goes missing for a while: /readyz says so, the worker waits.
        queue, moved = served.data / "broker" / "queue", served.data / "broker" / "queue.away"
        queue.rename(moved)
        try:
            t0 = time.monotonic()
            r = httpx.get(f"{served.url}/readyz", timeout=5)
            took = time.monotonic() - t0
            assert r.status_code == 503 and r.json()["checks"]["broker"] == "failing"
            r = served.client.post("/v1/jobs", json=spec)
            assert r.status_code == 503 and r.headers["retry-after"]
            assert r.json()["error"]["code"] == "broker_unavailable" and str(served.data) not in r.text
            time.sleep(3)  # several polls of the missing folder
            assert served.worker_pids() == [second]  # the worker did not exit
        finally:
            moved.rename(queue)
        wait_until(lambda: httpx.get(f"{served.url}/readyz", timeout=5).status_code == 200, 10, "readiness")
        print(f"/readyz with the queue folder missing: 503 in {took * 1000:.0f} ms")
        after = served.submit({**TINY_SPEC, "model": str(models["tiny"])})
        assert (
            served.wait(after, lambda j: j["status"] in TERMINAL, "a job after the outage")["status"]
            == "succeeded"
        )

        # serve killed outright: its worker notices and exits.
        os.kill(served.proc.pid, signal.SIGKILL)
        served.proc.wait(10)
        assert gone(second, 15), f"worker {second} outlived its serve"


def test_sigterm_stops_serve_and_its_busy_worker(tmp_path: Path, models: dict[str, Path]) -> None:
    with serving(tmp_path, models) as served:
        job_id = served.submit({**TINY_SPEC, "model": str(models["tiny"])})
        served.wait(job_id, lambda j: j["status"] == "running", "the job to start")
        worker = served.worker()
        served.proc.send_signal(signal.SIGTERM)  # docker stop, systemd, kill
        code = served.proc.wait(60)
        assert code == 0, served.logs()
        assert gone(worker, 5), f"worker {worker} outlived its serve"
