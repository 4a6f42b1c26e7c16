"""Status-poll latency under load: many clients polling ``GET /v1/jobs/{id}`` and ``GET /v1/jobs``.

By default it starts the real service the way docker-compose does (a uvicorn API process on the
machine's Postgres and Redis, plus a Celery worker with compose's command), records ``--jobs``
finished jobs to poll, and measures ``--pollers`` concurrent pollers for ``--duration`` seconds
in each scenario (``--scenarios``), printing latency percentiles and throughput per request kind:

- ``quiet``: nothing else runs.
- ``job``: a real compression job runs on the worker (``--job-model``, SmolLM2-135M by default),
  polled along with the others.
- ``kill``: the same, while the worker is killed with SIGKILL and started again every
  ``--kill-every`` seconds (what a crash under ``restart: unless-stopped`` is). No request may fail
  other than by a documented 503; the table counts 503s and every other failure apart.

    python benchmarks/poll_latency.py                              # 100 pollers, all three scenarios
    python benchmarks/poll_latency.py --scenarios quiet --duration 60 --api-workers 2
    python benchmarks/poll_latency.py --backend sqlite --scenarios quiet   # the default mode's stores
    python benchmarks/poll_latency.py --url http://host:8000 --key spk_... --job job_...

With ``--url`` it measures a running service instead (the ``quiet`` scenario only, as the service
is); without ``--job`` it submits ``--jobs`` jobs there first, which are real jobs on that service.
The pollers share one process and event loop (httpx.AsyncClient), so on a small machine the load
generator competes with the service for CPU: the table says so next to the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import secrets
import signal
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

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/14"

BODY: dict[str, Any] = {
    "model": "smollm2-135m",
    "sparsity": "2:4",
    "method": {"pruner": "wanda", "allocation": "uniform", "induction": False},
    "calibration": {"source": "pydoc", "samples": 4, "seq_len": 32, "seed": 0},
}
# The running job of the ``job`` and ``kill`` scenarios: long enough to outlast both windows.
JOB_BODY: dict[str, Any] = {
    "sparsity": "2:4",
    "method": {"pruner": "sparsegpt", "allocation": "uniform", "induction": False},
    "calibration": {"source": "pydoc", "samples": 32, "seq_len": 256, "seed": 0},
}
DOCUMENTED = {"200", "503"}  # 503 + Retry-After is the documented answer of a dependency that is down

# docker-compose's API command (its access log included: production writes it too).
API_CMD = ["-m", "uvicorn", "spruce.api.app:create_app", "--factory", "--host", "127.0.0.1"]
# docker-compose's worker command (python -m, for this interpreter).
WORKER_CMD = ["-m", "celery", "-A", "spruce.worker.app", "worker", "--pool", "solo", "--concurrency", "1"]
WORKER_CMD += ["--loglevel", "INFO"]


@dataclass
class Samples:
    """Latencies (seconds) of one request kind, and the status codes it got."""

    latencies: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)  # seconds into the window, per latency
    statuses: Counter[str] = field(default_factory=Counter)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n q / 100), at least 1
    return sorted_values[int(rank) - 1]


def p99_timeline(results: dict[str, Samples], step: float = 5.0) -> list[float]:
    """p99 (ms) of the requests that ended in each ``step`` seconds of the window: whether the
    tail is spread out or one stall."""
    buckets: dict[int, list[float]] = {}
    for s in results.values():
        for end, latency in zip(s.ends, s.latencies, strict=True):
            buckets.setdefault(int(end // step), []).append(latency)
    return [round(1000 * percentile(sorted(buckets[b]), 99), 1) for b in sorted(buckets)]


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
            "503": s.statuses.get("503", 0),
            "failed": sum(n for code, n in s.statuses.items() if code not in DOCUMENTED),
            "req/s": len(values) / duration if duration else float("nan"),
        }
        for q in (50, 90, 99):
            row[f"p{q} ms"] = 1000 * percentile(values, q)
        row["max ms"] = 1000 * values[-1] if values else float("nan")
        row["statuses"] = dict(s.statuses)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]], first: str = "request") -> str:
    cols = [first, "count", "503", "failed", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- the service under test -----------------------------------------------------------------------


@dataclass
class Target:
    url: str
    key: str
    worker: Worker | None = None  # the local worker process, when this script started it
    database_url: str | None = None


class Worker:
    """The Celery worker process, which the ``kill`` scenario kills and starts again."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *WORKER_CMD], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.starts += 1

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
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
        from spruce.common.db import get_engine

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
    """Start the API and a worker (compose's commands) on Postgres/Redis (or SQLite and the file queue)."""
    from spruce.common.db import session_scope, upgrade
    from spruce.common.keys import create_key

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="spruce-bench-")))
        queue = f"spruce-bench-{secrets.token_hex(4)}"
        env = {
            **os.environ,
            "SPRUCE_DATA_DIR": str(tmp / "data"),
            "SPRUCE_QUEUE": queue,
            "SPRUCE_STORAGE": "local",
            "SPRUCE_DEVICE": "cpu",
            "SPRUCE_RATE_LIMIT_PER_MINUTE": "0",  # measure the service, not its limiter
            # A killed worker's job is found by the next one within seconds, not minutes.
            "SPRUCE_HEARTBEAT_INTERVAL": "2",
            "SPRUCE_HEARTBEAT_TIMEOUT": "10",
            "SPRUCE_SWEEP_INTERVAL": "5",
            "SPRUCE_VISIBILITY_TIMEOUT": "60",
            "HF_HUB_OFFLINE": "1",
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
        worker = Worker(env, tmp / "worker.log")
        worker.start()
        stack.callback(worker.stop)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if api.poll() is not None:
                raise SystemExit((tmp / "api.log").read_text()[-3000:])
            try:
                return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 90, "the API")
        wait_for(lambda: b" ready." in (tmp / "worker.log").read_bytes(), 180, "the worker")
        yield Target(url=url, key=key, worker=worker, database_url=database_url)


def _drop_queue_keys(redis_url: str, queue: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    for name in r.scan_iter(f"*{queue}*"):
        r.delete(name)
    # A killed worker's message waits in kombu's unacked hash (one per Redis db), not in the queue.
    for tag, payload in r.hgetall("unacked").items():
        if queue.encode() in payload:
            r.hdel("unacked", tag)
            r.zrem("unacked_index", tag)


# -- what is polled -------------------------------------------------------------------------------


def record_jobs(database_url: str, n: int) -> list[str]:
    """``n`` finished jobs of the bench team with their events, written to the database directly
    (no message: the worker stays idle until a scenario submits a job)."""
    from spruce.common.db import session_scope
    from spruce.common.jobs import add_event, set_status
    from spruce.common.models import Job, Team
    from spruce.common.states import JobStatus

    ids = []
    with session_scope(database_url) as s:
        team = s.query(Team).filter_by(name="bench").one()
        for _ in range(n):
            job = Job(team_id=team.id, submitted_by="poll-latency", spec=BODY)
            s.add(job)
            s.flush()
            add_event(s, job.id, "status", "job created", data={"to": "queued"})
            set_status(s, job, JobStatus.RUNNING)
            for stage in ("load", "calibration", "prune", "evaluate"):
                add_event(s, job.id, "stage", f"stage {stage}", stage=stage)
            set_status(s, job, JobStatus.SUCCEEDED, results={"recorded": True})
            ids.append(job.id)
    return ids


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


def job_state(target: Target, job_id: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {target.key}"}
    for _ in range(30):  # the service may be answering 503 while the worker restarts
        r = httpx.get(f"{target.url}/v1/jobs/{job_id}", headers=headers, timeout=60)
        if r.status_code == 200:
            return dict(r.json())
        time.sleep(1)
    raise SystemExit(f"GET /v1/jobs/{job_id}: {r.status_code} {r.text[:300]}")


def running_job(target: Target, args: argparse.Namespace) -> str:
    """A compression job in its pruning stage (submitted when none runs), for the busy scenarios."""
    headers = {"Authorization": f"Bearer {target.key}"}
    with httpx.Client(base_url=target.url, headers=headers, timeout=60) as client:
        running = client.get("/v1/jobs", params={"status": "running"}).json()["data"]
        queued = client.get("/v1/jobs", params={"status": "queued"}).json()["data"]
        if not running and not queued:
            r = client.post("/v1/jobs", json={**JOB_BODY, "model": args.job_model})
            if r.status_code != 201:
                raise SystemExit(f"could not submit the compression job: {r.status_code} {r.text[:300]}")
            queued = [r.json()]
        job_id = str((running or queued)[0]["id"])

    def pruning() -> bool:
        job = job_state(target, job_id)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            raise SystemExit(f"the compression job ended before the scenario: {job['status']} {job['error']}")
        return job["status"] == "running" and job["stage"] not in (None, "load")

    wait_for(pruning, 600, f"job {job_id} to load its model")
    return job_id


# -- the load -------------------------------------------------------------------------------------


async def poll(
    target: Target, job_ids: list[str], args: argparse.Namespace, kill_every: float = 0.0
) -> tuple[dict[str, Samples], float, int]:
    """Run the pollers (and the worker killer when ``kill_every``); returns the samples, the
    measured seconds and the number of kills.

    A request counts when it ends after the warm-up (so one that started during the warm-up and
    hung is counted with the wait its client saw); pollers start no request after the measured
    window and the window closes when the last one answers.
    """
    results = {"GET /v1/jobs/{id}": Samples(), "GET /v1/jobs": Samples()}
    headers = {"Authorization": f"Bearer {target.key}"}
    start = time.perf_counter()
    measure_from, stop_at = start + args.warmup, start + args.warmup + args.duration
    last_end = measure_from
    kills = 0

    async def poller(client: aiohttp.ClientSession, rng: random.Random) -> None:
        nonlocal last_end
        await asyncio.sleep(rng.random() * args.interval)  # pollers out of step, as real ones are
        while (began := time.perf_counter()) < stop_at:
            if rng.random() < args.list_share:
                kind, path = "GET /v1/jobs", "/v1/jobs?limit=20"
            else:
                kind, path = "GET /v1/jobs/{id}", f"/v1/jobs/{rng.choice(job_ids)}"
            try:
                async with client.get(path) as r:
                    await r.read()
                    status = str(r.status)
            except (aiohttp.ClientError, TimeoutError) as exc:  # a timeout is a result too
                status = type(exc).__name__
            ended = time.perf_counter()
            if ended >= measure_from:
                results[kind].latencies.append(ended - began)
                results[kind].ends.append(ended - measure_from)
                results[kind].statuses[status] += 1
                last_end = max(last_end, ended)
            await asyncio.sleep(max(0.0, began + args.interval - time.perf_counter()))

    async def killer(worker: Worker) -> None:
        nonlocal kills
        while time.perf_counter() + kill_every < stop_at:
            await asyncio.sleep(kill_every)
            worker.kill()  # SIGKILL: no warm shutdown, the job is left running on its row
            worker.start()  # what `restart: unless-stopped` does
            kills += 1

    # aiohttp rather than httpx: the load generator shares the machine's cores with the service,
    # and httpx's client spent about as much CPU per request as the API did.
    # Idle connections are dropped by the client before uvicorn's 5 s keep-alive timeout closes
    # them: a request sent on a connection the server is closing fails without an answer.
    connector = aiohttp.TCPConnector(limit=args.pollers, keepalive_timeout=2.0)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(
        base_url=target.url, headers=headers, connector=connector, timeout=timeout
    ) as client:
        tasks = [poller(client, random.Random(i)) for i in range(args.pollers)]
        if kill_every and target.worker is not None:
            tasks.append(killer(target.worker))
        await asyncio.gather(*tasks)
    return results, max(1e-9, last_end - measure_from), kills


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}"


def run_scenario(name: str, target: Target, job_ids: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Measure one scenario; returns its rows and what the machine and the job did meanwhile."""
    busy = None if name == "quiet" else running_job(target, args)
    before = machine()
    polled = [*job_ids, busy] if busy else job_ids
    kill_every = args.kill_every if name == "kill" else 0.0
    # The load generator's own full collections (it imports the service's modules) would stall
    # every poller at once and count as the service's latency.
    gc.collect()
    gc.freeze()
    results, measured, kills = asyncio.run(poll(target, polled, args, kill_every))
    out: dict[str, Any] = {
        "scenario": name,
        "rows": summary_rows(results, measured),
        "p99_per_5s": p99_timeline(results),
        "measured_s": measured,
        "machine_before": before,
        "machine_after": machine(),
        "kills": kills,
    }
    if busy:
        job = job_state(target, busy)
        keys = ("status", "stage", "progress", "attempts", "resumes")
        out["job"] = {"id": busy, **{k: job.get(k) for k in keys}}
    return out


def report(scenarios: list[dict[str, Any]], args: argparse.Namespace) -> None:
    where = args.url or f"local {args.backend} stack, {args.api_workers} API process(es), compose's worker"
    pace = f"every {args.interval:g} s" if args.interval else "back to back"
    print(
        f"{args.pollers} pollers polling {pace}, {args.list_share:.0%} list requests, "
        f"{args.duration:.0f} s per scenario; {where}"
    )
    summary = []
    for sc in scenarios:
        total = dict(sc["rows"][-1])
        total["scenario"] = sc["scenario"] + (f" ({sc['kills']} kills)" if sc["kills"] else "")
        summary.append(total)
        print(f"\n### {sc['scenario']}: {sc['measured_s']:.1f} s measured")
        print(f"machine: {sc['machine_before']} before, {sc['machine_after']} after")
        if "job" in sc:
            print(f"compression job after the window: {sc['job']}")
        print(markdown_table(sc["rows"]))
        print(f"p99 ms per 5 s of the window: {sc['p99_per_5s']}")
        odd = {r["request"]: r["statuses"] for r in sc["rows"] if r["non-200"] and r["request"] != "all"}
        if odd:
            print(f"non-200 answers: {odd}")
    print("\n### summary (all requests)")
    print(markdown_table(summary, first="scenario"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running service (default: start one here)")
    p.add_argument("--key", help="API key for --url")
    p.add_argument("--job", action="append", default=[], help="poll this job id (repeatable)")
    p.add_argument("--jobs", type=int, default=10, help="jobs to poll (default 10)")
    p.add_argument("--pollers", type=int, default=100, help="concurrent pollers (default 100)")
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds from one request of a poller to its next, as `spruce status` polls (default 1; 0: back to back)",
    )
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per scenario (default 20)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (default 3)")
    p.add_argument("--timeout", type=float, default=60.0, help="client timeout per request (default 60)")
    p.add_argument("--list-share", type=float, default=0.2, help="share of GET /v1/jobs (default 0.2)")
    p.add_argument("--scenarios", default="quiet,job,kill", help="comma-separated: quiet, job, kill")
    p.add_argument(
        "--job-model", default="smollm2-135m", help="model of the running job (default smollm2-135m)"
    )
    p.add_argument("--kill-every", type=float, default=30.0, help="kill scenario: seconds between kills")
    p.add_argument("--kill-duration", type=float, default=65.0, help="measured seconds of the kill scenario")
    p.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--pg-admin", default=PG_ADMIN, help="Postgres URL to create the temporary database on")
    p.add_argument("--redis", default=REDIS, help="broker for --backend postgres")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.url and not args.key:
        p.error("--url needs --key")
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    if not set(names) <= {"quiet", "job", "kill"} or (args.url and names != ["quiet"]):
        p.error("--scenarios takes quiet, job, kill (only quiet with --url)")

    scenarios = []
    with ExitStack() as stack:
        target = Target(args.url, args.key) if args.url else stack.enter_context(local_service(args))
        if args.job:
            job_ids = args.job
        elif target.database_url:
            job_ids = record_jobs(target.database_url, args.jobs)
        else:
            job_ids = create_jobs(target, args.jobs)
        for name in names:
            duration = args.duration
            if name == "kill":  # long enough for two kills
                args.duration = max(args.duration, args.kill_duration)
            scenarios.append(run_scenario(name, target, job_ids, args))
            args.duration = duration
    report(scenarios, args)
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "scenarios": scenarios}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
