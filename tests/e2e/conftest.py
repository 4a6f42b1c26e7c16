"""The real service for browser tests: `spruce serve` (API + a real Celery worker on SQLite) in a
temporary folder, tiny models under SPRUCE_MODEL_ROOTS, two teams' keys from `spruce keys create`,
and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("SPRUCE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
START_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 600.0  # a tiny job takes seconds; the bound only stops a hung run from hanging CI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spruce(*args: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "spruce.cli.main", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout


@dataclass
class Service:
    """A running `spruce serve`, with helpers that call its API directly (to set up and check)."""

    url: str
    key_a: str
    key_b: str
    model: str  # a tiny 2-layer model: seconds per job
    four_layer_model: str  # for the job watched through the form: long enough to see it move
    long_model: str  # 24 thin layers: a job that is still running when the test cancels it
    data_dir: Path
    log: Path
    _jobs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def request(self, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def submit(self, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        status, job = self.request("POST", "/v1/jobs", key or self.key_a, body)
        assert status == 201, job
        return job

    def wait(
        self,
        job_id: str,
        key: str | None = None,
        until: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
    ) -> dict[str, Any]:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while True:
            status, job = self.request("GET", f"/v1/jobs/{job_id}", key or self.key_a)
            assert status == 200, job
            if job["status"] in until:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"{job_id} still {job['status']} after {JOB_TIMEOUT_S}s; see {self.log}")
            time.sleep(0.5)

    def cli(self, *args: str) -> str:
        """`spruce ARGS --data-dir <this service's>`: the admin commands (keys, team limits)."""
        env = {**os.environ, "SPRUCE_DATA_DIR": str(self.data_dir)}
        return _spruce(*args, "--data-dir", str(self.data_dir), env=env)

    def tiny_spec(self, **overrides: Any) -> dict[str, Any]:
        """A job body small enough to finish in seconds on a CPU."""
        spec: dict[str, Any] = {
            "model": self.model,
            "sparsity": 0.5,
            "method": {"pruner": "wanda", "allocation": "uniform", "induction": False},
            "calibration": {"source": "pydoc", "samples": 4, "seq_len": 32, "seed": 0},
            "evaluation": {"sources": ["pydoc"]},
            "experimental": {"evaluation": {"seq_len": 32, "max_windows": 2}},
        }
        spec.update(overrides)
        return spec


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"spruce serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
            if resp.status == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"spruce serve did not answer within {START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Ctrl-C for `serve` (it stops its worker in order); then whatever is left of what we started."""
    worker_pid = None
    match = re.search(r"worker: pid (\d+)", log.read_text() if log.exists() else "")
    if match:
        worker_pid = int(match.group(1))
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if worker_pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker_pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    from tests.tiny import tiny_model_dir

    root = tmp_path_factory.mktemp("spruce-e2e")
    models = root / "models"
    model = tiny_model_dir(models, "llama", layers=2, hidden=64)
    four_layer_model = tiny_model_dir(models, "llama", layers=4, hidden=64)
    long_model = tiny_model_dir(models, "llama", layers=24, hidden=64)
    data_dir = root / "data"
    env = {
        **os.environ,
        "SPRUCE_DATA_DIR": str(data_dir),
        "SPRUCE_MODEL_ROOTS": str(models),
        "SPRUCE_ALLOW_HUB_MODELS": "false",
        "SPRUCE_PROGRESS_INTERVAL": "0.2",
        "SPRUCE_CANCEL_CHECK_INTERVAL": "0.2",
        "SPRUCE_MAX_RETRIES": "0",
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
    }
    # Keys first (the command migrates the database): two teams, each with a named key.
    key_a = _spruce(
        "keys", "create", "--team", "team-a", "--name", "alice", "--data-dir", str(data_dir), env=env
    )
    key_b = _spruce(
        "keys", "create", "--team", "team-b", "--name", "bob", "--data-dir", str(data_dir), env=env
    )
    port = _free_port()
    log = root / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "spruce.cli.main",
                "serve",
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, proc, log)
        yield Service(
            url=url,
            key_a=key_a.strip().splitlines()[-1],
            key_b=key_b.strip().splitlines()[-1],
            model=str(model),
            four_layer_model=str(four_layer_model),
            long_model=str(long_model),
            data_dir=data_dir,
            log=log,
        )
    finally:
        _stop(proc, log)
        worker_log = data_dir / "logs" / "worker.log"
        if worker_log.exists():
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(worker_log, ARTIFACTS / "e2e-worker.log")
            shutil.copy(log, ARTIFACTS / "e2e-serve.log")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set SPRUCE_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class PageErrors:
    """Uncaught exceptions in the page, and requests to anywhere but the service."""

    uncaught: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)


@pytest.fixture
def page(browser: Any, service: Service) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    errors = PageErrors()
    pg.on("pageerror", lambda exc: errors.uncaught.append(str(exc)))

    def on_request(request: Any) -> None:
        if not request.url.startswith((service.url + "/", "blob:", "data:")):
            errors.foreign.append(request.url)

    pg.on("request", on_request)
    yield pg
    context.close()
    assert not errors.uncaught, f"uncaught errors in the page: {errors.uncaught}"
    assert not errors.foreign, f"the page fetched from outside the service: {errors.foreign}"


def sign_in(page: Any, service: Service, key: str) -> None:
    page.goto(service.url + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#jobs-title").wait_for()


def wait_for_value(page: Any, read: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """Call ``read`` until it returns something other than None or False, and return that.

    Not ``page.wait_for_function``: once its first check is false it polls by eval, which the
    dashboard's CSP (script-src 'self') refuses, so it failed only when the page was slow."""
    deadline = time.monotonic() + timeout_s
    while (value := read()) is None or value is False:
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        page.wait_for_timeout(50)
    return value


def wait_until(page: Any, predicate: str, arg: Any = None, timeout_s: float = 30.0) -> None:
    """Poll ``predicate`` (a JS function of ``arg``) in the page until it returns true."""
    wait_for_value(page, lambda: bool(page.evaluate(predicate, arg)), predicate, timeout_s)
