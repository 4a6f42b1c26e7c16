"""Dependencies down and back: the API answers 503 naming the dependency, writes nothing half-way,
and recovers on its own once the dependency returns.

The machine's shared Postgres and Redis are never touched: this module starts its own Redis
(redis-server on a free port), its own Postgres cluster (initdb/pg_ctl in a temporary folder,
as the ``postgres`` user when run as root, since Postgres refuses root) and its own moto S3
server, and stops and restarts them under an in-process app.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.integration.conftest import TINY_SPEC, free_port, wait_until

pytestmark = pytest.mark.integration

PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
REDIS_SERVER = shutil.which("redis-server")


# --- own services -------------------------------------------------------------------------------


@dataclass
class OwnRedis:
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER, "redis-server is not installed"
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._pong, 30, f"redis on {self.port}")

    def _pong(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def llen(self, queue: str) -> int:
        import redis

        return int(redis.Redis(port=self.port).llen(queue))


@dataclass
class OwnPostgres:
    port: int
    folder: Path
    as_user: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self.as_user, *cmd], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        bin_dir = PG_BINS[-1]
        self._run(
            str(bin_dir / "initdb"),
            "-D",
            str(self.folder / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg_ctl = str(PG_BINS[-1] / "pg_ctl")
        self._run(
            pg_ctl,
            "-D",
            str(self.folder / "data"),
            "-o",
            options,
            "-l",
            str(self.folder / "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run(str(PG_BINS[-1] / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")


class OwnS3:
    """A moto server that can be stopped (its socket closed: refused, not hanging) and started again
    on the same port; the objects live in this process's moto backend, so they survive."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        # ThreadedMotoServer stops serving but keeps its listening socket; close it, so that the
        # store is truly gone (connection refused) rather than accepting and never answering.
        inner = getattr(self.server, "_server", None)
        if inner is not None:
            inner.server_close()

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )


@dataclass
class Deps:
    redis: OwnRedis
    pg: OwnPostgres
    s3: OwnS3
    bucket: str
    queue: str
    client: TestClient
    models: dict[str, Path]

    def count(self, model: type[Any]) -> int:
        from spruce.common.db import session_scope

        with session_scope(self.pg.url) as s:
            return int(s.scalar(select(func.count()).select_from(model)) or 0)

    def objects(self) -> list[str]:
        listed = self.s3.client().list_objects_v2(Bucket=self.bucket)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def body(self) -> dict[str, Any]:
        return {**TINY_SPEC, "model": str(self.models["tiny"])}


def _postgres_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    pwd.getpwnam("postgres")  # KeyError: no user to run Postgres as
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="module")
def deps(models: dict[str, Path]) -> Iterator[Deps]:
    from spruce.api.app import create_app
    from spruce.common.db import get_engine, session_scope, upgrade
    from spruce.common.keys import create_key
    from spruce.common.settings import Settings

    assert PG_BINS, "no PostgreSQL server binaries under /usr/lib/postgresql"
    as_user = _postgres_user()
    # Not under pytest's tmp folder: that one is private to root and Postgres runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="spruce-pg-"))
    if as_user:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    pg = OwnPostgres(free_port(), folder, as_user)
    redis_ = OwnRedis(free_port())
    s3 = OwnS3(free_port())
    bucket, queue = f"deps-{secrets.token_hex(4)}", f"deps-{secrets.token_hex(4)}"
    try:
        pg.init()
        pg.start()
        redis_.start()
        s3.start()
        s3.client().create_bucket(Bucket=bucket)
        upgrade(pg.url)
        with session_scope(pg.url) as s:
            key = create_key(s, "acme", "ci").secret
        settings = Settings(
            data_dir=folder / "spruce",
            database_url=pg.url,
            broker_url=redis_.url,
            broker_timeout=1.0,
            queue=queue,
            storage="s3",
            s3_bucket=bucket,
            s3_endpoint_url=s3.endpoint,
            s3_access_key_id="test",
            s3_secret_access_key="test",  # type: ignore[arg-type]
            model_roots=[models["tiny"].parent],
        )
        # Entered, so the app starts up as under uvicorn (its lifespan builds the broker's client).
        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as client:
            yield Deps(redis_, pg, s3, bucket, queue, client, models)
    finally:
        get_engine(pg.url).dispose()
        for stop in (redis_.stop, s3.stop, pg.stop):
            try:
                stop()
            except Exception as exc:  # already stopped by a failed test: nothing to clean
                print(f"cleanup: {exc}")
        shutil.rmtree(folder, ignore_errors=True)


def ready(client: TestClient) -> bool:
    return client.get("/readyz").status_code == 200


def _down(r: Any, code: str) -> dict[str, Any]:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5"
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code
    return err


# --- the tests ----------------------------------------------------------------------------------


def test_broker_down_then_back(deps: Deps) -> None:
    from spruce.common.models import Job

    client = deps.client
    assert ready(client)
    deps.redis.stop()
    try:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["error"]["message"] == "broker is down"
        checks = r.json()["checks"]
        assert checks["broker"] == "failing" and checks["database"] == checks["storage"] == "ok"

        jobs_before = deps.count(Job)
        r = client.post("/v1/jobs", json=deps.body(), headers={"Idempotency-Key": "during-outage"})
        err = _down(r, "broker_unavailable")
        assert "queue is unreachable" in err["message"]
        failed = client.get(f"/v1/jobs/{r.json()['job']}").json()  # reads work without the broker
        assert failed["status"] == "failed" and failed["error"]["code"] == "broker_unavailable"
        assert deps.count(Job) == jobs_before + 1  # recorded once, marked failed, not half-queued
    finally:
        deps.redis.start()

    wait_until(lambda: ready(client), 60, "readiness after Redis is back")
    retry = client.post("/v1/jobs", json=deps.body(), headers={"Idempotency-Key": "during-outage"})
    assert retry.status_code == 201 and retry.json()["id"] != failed["id"]  # a fresh, enqueued job
    assert deps.redis.llen(deps.queue) == 1  # Redis came back empty: this is the retry's message
    plain = client.post("/v1/jobs", json=deps.body())
    assert plain.status_code == 201 and deps.redis.llen(deps.queue) == 2


def test_database_down_then_back(deps: Deps) -> None:
    from spruce.common.models import Dataset, Job

    client = deps.client
    assert ready(client)
    jobs, datasets = deps.count(Job), deps.count(Dataset)
    messages, objects = deps.redis.llen(deps.queue), deps.objects()
    deps.pg.stop()
    try:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["error"]["message"] == "database is down"
        assert r.json()["checks"]["broker"] == "ok" and r.json()["checks"]["storage"] == "ok"
        err = _down(client.get("/v1/jobs"), "database_unavailable")
        assert "database" in err["message"]
        _down(client.post("/v1/jobs", json=deps.body()), "database_unavailable")
        _down(
            client.post("/v1/jobs", json=deps.body(), headers={"Idempotency-Key": "db-down"}),
            "database_unavailable",
        )
        _down(client.post("/v1/datasets", files={"file": ("a.txt", b"text\n")}), "database_unavailable")
        # Nothing went anywhere else either: no message, no object.
        assert deps.redis.llen(deps.queue) == messages and deps.objects() == objects
    finally:
        deps.pg.start()

    wait_until(lambda: client.get("/v1/jobs").status_code == 200, 60, "the API after Postgres is back")
    assert (deps.count(Job), deps.count(Dataset)) == (jobs, datasets)
    assert ready(client)
    r = client.post("/v1/jobs", json=deps.body(), headers={"Idempotency-Key": "db-down"})
    assert r.status_code == 201 and deps.count(Job) == jobs + 1
    assert deps.redis.llen(deps.queue) == messages + 1


def test_storage_down_then_back(deps: Deps) -> None:
    from spruce.common.models import Dataset, Job

    client = deps.client
    assert ready(client)
    datasets, objects = deps.count(Dataset), deps.objects()
    deps.s3.stop()
    try:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["error"]["message"] == "storage is down"
        assert r.json()["checks"]["database"] == "ok" and r.json()["checks"]["broker"] == "ok"
        err = _down(
            client.post("/v1/datasets", files={"file": ("a.txt", b"some text\n")}), "storage_unavailable"
        )
        assert "object storage" in err["message"]
        assert deps.count(Dataset) == datasets  # no row for a file that was never stored
        # What does not need storage keeps working.
        assert client.get("/v1/jobs").status_code == 200
        jobs = deps.count(Job)
        assert client.post("/v1/jobs", json=deps.body()).status_code == 201 and deps.count(Job) == jobs + 1
    finally:
        deps.s3.start()

    wait_until(lambda: ready(client), 60, "readiness after S3 is back")
    assert deps.objects() == objects  # nothing was half-uploaded
    up = client.post("/v1/datasets", files={"file": ("a.txt", b"some text\n")})
    assert up.status_code == 201 and deps.count(Dataset) == datasets + 1
    assert len(deps.objects()) == len(objects) + 1
