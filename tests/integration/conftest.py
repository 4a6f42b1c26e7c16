"""Real services for the integration tests: the machine's Postgres and Redis, a moto S3 server,
a Celery worker process and a uvicorn API process, started with the same commands as
docker-compose.yml. Each session gets its own database, Redis db and queue, and bucket."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN = os.environ.get("SPRUCE_TEST_PG_ADMIN", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("SPRUCE_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = 13  # dedicated to these tests; the queue name is unique per session on top of it

# The commands of docker-compose.yml (python -m so that the venv's interpreter runs them).
API_CMD = ["-m", "uvicorn", "spruce.api.app:create_app", "--factory", "--host", "127.0.0.1"]
WORKER_CMD = [
    "-m",
    "celery",
    "-A",
    "spruce.worker.app",
    "worker",
    "--pool",
    "solo",
    "--concurrency",
    "1",
    "--loglevel",
    "INFO",
]

# A job on a tiny model that finishes in seconds (plain pruning: induction is on by default).
TINY_SPEC: dict[str, Any] = {
    "sparsity": 0.5,
    "method": {"pruner": "wanda", "induction": False},
    "calibration": {"source": "pydoc", "samples": 4, "seq_len": 32, "seed": 0},
    "evaluation": {"sources": ["pydoc"]},
    "experimental": {"evaluation": {"seq_len": 32, "max_windows": 2}},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def stack_env(
    tmp: Path, database_url: str, queue: str, s3: dict[str, str], models: dict[str, Path]
) -> dict[str, str]:
    """The environment of a production-shaped stack: Postgres, the shared Redis (own queue), the
    moto S3 server, models under the tiny models' folder, CPU; state and caches under ``tmp``."""
    return {
        **os.environ,
        "SPRUCE_DATA_DIR": str(tmp / "data"),
        "SPRUCE_DATABASE_URL": database_url,
        "SPRUCE_BROKER_URL": f"{REDIS}/{REDIS_DB}",
        "SPRUCE_QUEUE": queue,
        "SPRUCE_STORAGE": "s3",
        "SPRUCE_S3_BUCKET": s3["bucket"],
        "SPRUCE_S3_ENDPOINT_URL": s3["endpoint"],
        "SPRUCE_S3_ACCESS_KEY_ID": "test",
        "SPRUCE_S3_SECRET_ACCESS_KEY": "test",
        "SPRUCE_MODEL_ROOTS": str(models["tiny"].parent),
        "SPRUCE_DEVICE": "cpu",
        "SPRUCE_CACHE_DIR": str(tmp / "cache"),
    }


@contextmanager
def api_and_worker(
    env: dict[str, str],
    tmp: Path,
    *,
    worker_cmd: list[str] = WORKER_CMD,
    api_args: tuple[str, ...] = (),
    api_wait: float = 60.0,
    worker_wait: float = 90.0,
    probe_timeout: float = 2.0,
) -> Iterator[str]:
    """A uvicorn API and a Celery worker process on ``env``, logs in ``tmp``; yields the API's URL
    once /readyz answers 200 and the worker says it is ready; stops both on the way out."""
    port = free_port()
    worker_log, api_log = tmp / "worker.log", tmp / "api.log"
    with open(worker_log, "wb") as wl, open(api_log, "wb") as al:
        worker = subprocess.Popen(
            [sys.executable, *worker_cmd], cwd=ROOT, env=env, stdout=wl, stderr=subprocess.STDOUT
        )
        api = subprocess.Popen(
            [sys.executable, *API_CMD, "--port", str(port), *api_args],
            cwd=ROOT,
            env=env,
            stdout=al,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def api_up() -> bool:
            assert api.poll() is None, api_log.read_text()
            try:
                return httpx.get(f"{url}/readyz", timeout=probe_timeout).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(api_up, api_wait, "the API")
        wait_until(
            lambda: worker.poll() is None and b" ready." in worker_log.read_bytes(), worker_wait, "the worker"
        )
        yield url
    finally:
        stop(api)
        stop(worker, timeout=30)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    from sqlalchemy import create_engine, text

    name = f"spruce_test_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from spruce.common.db import get_engine

        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, str]]:
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = f"spruce-{secrets.token_hex(4)}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    client.create_bucket(Bucket=bucket)
    try:
        yield {"endpoint": endpoint, "bucket": bucket}
    finally:
        server.stop()


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.tiny import tiny_model_dir

    root = tmp_path_factory.mktemp("models")
    return {
        "tiny": tiny_model_dir(root, "llama", layers=2, hidden=64),
        # More layers and a wider model: slow enough to be cancelled while it runs.
        "slow": tiny_model_dir(root, "llama", layers=8, hidden=256),
    }


@dataclass
class Stack:
    env: dict[str, str]
    url: str
    database_url: str
    s3: dict[str, str]
    keys: dict[str, str] = field(default_factory=dict)
    worker_log: Path | None = None

    def client(self, key: str = "acme") -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.keys[key]}"}, timeout=30
        )

    def settings(self, **overrides: Any) -> Any:
        from spruce.common.settings import Settings

        values: dict[str, Any] = {
            k[len("SPRUCE_") :].lower(): v for k, v in self.env.items() if k.startswith("SPRUCE_")
        }
        values.update(overrides)
        return Settings(**values)


@pytest.fixture(scope="session")
def stack(
    pg_url: str, s3: dict[str, str], models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    from spruce.common.db import session_scope, upgrade
    from spruce.common.keys import create_key

    tmp = tmp_path_factory.mktemp("stack")
    queue = f"spruce-test-{secrets.token_hex(4)}"
    env = {
        **stack_env(tmp, pg_url, queue, s3, models),
        "SPRUCE_PROGRESS_INTERVAL": "0.2",
        "SPRUCE_CANCEL_CHECK_INTERVAL": "0.2",
        "SPRUCE_MAX_RETRIES": "1",
        "SPRUCE_RETRY_BACKOFF": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    upgrade(pg_url)
    with session_scope(pg_url) as session:
        keys = {
            "acme": create_key(session, "acme", "ci").secret,
            "rival": create_key(session, "rival", "x").secret,
        }

    worker_log = tmp / "worker.log"
    try:
        with api_and_worker(env, tmp) as url:
            yield Stack(env=env, url=url, database_url=pg_url, s3=s3, keys=keys, worker_log=worker_log)
    finally:
        if os.environ.get("SPRUCE_TEST_SHOW_LOGS"):
            print(worker_log.read_text()[-5000:])
        import redis

        # The session's queue and its bookkeeping keys, nothing else in the shared Redis.
        r = redis.Redis.from_url(f"{REDIS}/{REDIS_DB}")
        for key in r.scan_iter(f"*{queue}*"):
            r.delete(key)
