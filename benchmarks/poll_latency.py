"""Status-poll latency under load: many clients polling ``GET /v1/jobs/{id}`` and ``GET /v1/jobs``.

By default it starts the real service the way docker-compose does (a uvicorn API process on the
machine's Postgres and Redis, plus a Celery worker in dry-run mode so the polled jobs really
move through their stages), submits a few jobs, then runs ``--pollers`` concurrent pollers for
``--duration`` seconds and prints latency percentiles and throughput per request kind.

    python benchmarks/poll_latency.py                              # 100 pollers, 20 s, Postgres
    python benchmarks/poll_latency.py --pollers 50 --duration 60 --api-workers 2
    python benchmarks/poll_latency.py --backend sqlite             # the default mode (`spruce serve`)
    python benchmarks/poll_latency.py --url http://host:8000 --key spk_... --job job_...

With ``--url`` it measures a running service instead; without ``--job`` it submits ``--jobs``
jobs there first, which are real jobs on that service (its workers will run them). The
pollers share one process and event loop (httpx.AsyncClient), so on a small machine the load
generator competes with the service for CPU: the table says so next to the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/14"

BODY: dict[str, Any] = {
    "model": "smollm2-135m",
    "sparsity": "2:4",
    "method": {"pruner": "wanda", "allocation": "uniform", "induction": {"enabled": False}},
    "calibration": {"source": "pydoc", "samples": 4, "seq_len": 32, "seed": 0},
    "evaluation": {"sources": ["pydoc"]},
}

API_CMD = [
    "-m",
    "uvicorn",
    "api.app:create_app",
    "--factory",
    "--host",
    "127.0.0.1",
    "--log-level",
    "warning",
]
WORKER_CMD = ["-m", "celery", "-A", "worker.app", "worker", "--pool", "threads", "--concurrency", "4"]
WORKER_CMD += ["--loglevel", "INFO"]


@dataclass
class Samples:
    """Latencies (seconds) of one request kind, and the status codes it got."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n q / 100), at least 1
    return sorted_values[int(rank) - 1]


def summary_rows(results: dict[str, Samples], duration: float) -> list[dict[str, Any]]:
    """One row per request kind plus a total: count, errors, req/s and p50/p90/p99/max in ms."""
    total = Samples()
    for s in results.values():
        total.latencies += s.latencies
        total.statuses.update(s.statuses)
    rows = []
    for name, s in [*results.items(), ("all", total)]:
        values = sorted(s.latencies)
        ok = s.statuses.get("200", 0)
        row: dict[str, Any] = {
            "request": name,
            "count": len(values),
            "non-200": len(values) - ok,
            "req/s": len(values) / duration if duration else float("nan"),
        }
        for q in (50, 90, 99):
            row[f"p{q} ms"] = 1000 * percentile(values, q)
        row["max ms"] = 1000 * values[-1] if values else float("nan")
        row["statuses"] = dict(s.statuses)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    cols = ["request", "count", "non-200", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- the service under test -----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    url: str
    key: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the Postgres server of ``admin_url``, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"spruce_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        from common.db import get_engine

        get_engine(admin_url.rsplit("/", 1)[0] + f"/{name}").dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def process(cmd: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *cmd], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def local_service(args: argparse.Namespace) -> Iterator[Target]:
    """Start API + dry-run worker on Postgres/Redis (or SQLite and the filesystem queue)."""
    from common.db import session_scope, upgrade
    from common.keys import create_key

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="spruce-bench-")))
        queue = f"spruce-bench-{secrets.token_hex(4)}"
        env = {
            **os.environ,
            "SPRUCE_DATA_DIR": str(tmp / "data"),
            "SPRUCE_QUEUE": queue,
            "SPRUCE_STORAGE": "local",
            "SPRUCE_DRY_RUN": "1",
            "SPRUCE_DEVICE": "cpu",
            "SPRUCE_RATE_LIMIT_PER_MINUTE": "0",  # measure the service, not its limiter
            "PYTHONUNBUFFERED": "1",
        }
        if args.backend == "postgres":
            env["SPRUCE_DATABASE_URL"] = stack.enter_context(postgres_database(args.pg_admin))
            env["SPRUCE_BROKER_URL"] = args.redis
            stack.callback(_drop_queue_keys, args.redis, queue)
            database_url = env["SPRUCE_DATABASE_URL"]
        else:
            database_url = f"sqlite:///{tmp / 'data' / 'spruce.db'}"
        upgrade(database_url)
        with session_scope(database_url) as session:
            key = create_key(session, "bench", "poll-latency").secret
        port = free_port()
        api_cmd = [*API_CMD, "--port", str(port), "--workers", str(args.api_workers)]
        api = stack.enter_context(process(api_cmd, env, tmp / "api.log"))
        worker = stack.enter_context(process(WORKER_CMD, env, tmp / "worker.log"))
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if api.poll() is not None:
                raise SystemExit((tmp / "api.log").read_text()[-3000:])
            try:
                return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 90, "the API")
        wait_for(lambda: b" ready." in (tmp / "worker.log").read_bytes(), 120, "the worker")
        if worker.poll() is not None:
            raise SystemExit((tmp / "worker.log").read_text()[-3000:])
        yield Target(url=url, key=key)


def _drop_queue_keys(redis_url: str, queue: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    for name in r.scan_iter(f"*{queue}*"):
        r.delete(name)


# -- the load -------------------------------------------------------------------------------------


def create_jobs(target: Target, n: int) -> list[str]:
    headers = {"Authorization": f"Bearer {target.key}"}
    with httpx.Client(base_url=target.url, headers=headers, timeout=60) as client:
        ids = []
        for _ in range(n):
            r = client.post("/v1/jobs", json=BODY)
            if r.status_code != 201:
                raise SystemExit(f"could not submit a job: {r.status_code} {r.text[:300]}")
            ids.append(r.json()["id"])
    return ids


async def poll(
    target: Target, job_ids: list[str], args: argparse.Namespace
) -> tuple[dict[str, Samples], float]:
    """Run the pollers; returns the samples and the measured seconds.

    A request counts when it ends after the warm-up (so one that started during the warm-up and
    hung is counted with the wait its client saw); pollers start no request after the measured
    window and the window closes when the last one answers.
    """
    results = {"GET /v1/jobs/{id}": Samples(), "GET /v1/jobs": Samples()}
    limits = httpx.Limits(max_connections=args.pollers, max_keepalive_connections=args.pollers)
    headers = {"Authorization": f"Bearer {target.key}"}
    start = time.perf_counter()
    measure_from, stop_at = start + args.warmup, start + args.warmup + args.duration
    last_end = measure_from

    async def poller(client: httpx.AsyncClient, rng: random.Random) -> None:
        nonlocal last_end
        while (began := time.perf_counter()) < stop_at:
            if rng.random() < args.list_share:
                kind, path = "GET /v1/jobs", "/v1/jobs?limit=20"
            else:
                kind, path = "GET /v1/jobs/{id}", f"/v1/jobs/{rng.choice(job_ids)}"
            try:
                r = await client.get(path)
                status = str(r.status_code)
            except httpx.HTTPError as exc:  # a timeout is a result too
                status = type(exc).__name__
            ended = time.perf_counter()
            if ended >= measure_from:
                results[kind].latencies.append(ended - began)
                results[kind].statuses[status] += 1
                last_end = max(last_end, ended)

    async with httpx.AsyncClient(
        base_url=target.url, headers=headers, limits=limits, timeout=args.timeout
    ) as client:
        await asyncio.gather(*(poller(client, random.Random(i)) for i in range(args.pollers)))
    return results, max(1e-9, last_end - measure_from)


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running service (default: start one here)")
    p.add_argument("--key", help="API key for --url")
    p.add_argument("--job", action="append", default=[], help="poll this job id (repeatable)")
    p.add_argument("--jobs", type=int, default=10, help="jobs to submit and poll (default 10)")
    p.add_argument("--pollers", type=int, default=100, help="concurrent pollers (default 100)")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds (default 20)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (default 3)")
    p.add_argument("--timeout", type=float, default=60.0, help="client timeout per request (default 60)")
    p.add_argument("--list-share", type=float, default=0.2, help="share of GET /v1/jobs (default 0.2)")
    p.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--pg-admin", default=PG_ADMIN, help="Postgres URL to create the temporary database on")
    p.add_argument("--redis", default=REDIS, help="broker for --backend postgres")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    if args.url and not args.key:
        p.error("--url needs --key")

    with ExitStack() as stack:
        target = Target(args.url, args.key) if args.url else stack.enter_context(local_service(args))
        job_ids = args.job or create_jobs(target, args.jobs)
        before = machine()
        results, measured = asyncio.run(poll(target, job_ids, args))
        after = machine()
    rows = summary_rows(results, measured)
    where = args.url or f"local {args.backend} stack, {args.api_workers} API process(es), dry-run worker"
    load = f"{args.pollers} pollers, {len(job_ids)} jobs, {args.list_share:.0%} list requests"
    print(f"{load}; {measured:.1f} s measured after {args.warmup:.0f} s warm-up; {where}")
    print(f"machine: {before} before, {after} after")
    print(markdown_table(rows))
    odd = {r["request"]: r["statuses"] for r in rows if r["non-200"] and r["request"] != "all"}
    if odd:
        print(f"non-200 answers: {odd}")
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
