"""`spruce serve` (API + a real Celery worker, no services needed), `spruce worker`, `spruce migrate`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from spruce.cli.supervisor import WorkerSupervisor

log = logging.getLogger(__name__)

# The worker command, the same in `spruce serve`, `spruce worker`, docker-compose.yml and the tests.
WORKER_ARGS = (
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
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the API and one worker with no services (SQLite, filesystem queue, local artifacts)",
        description="Run the API and a Celery worker process. Everything lives under --data-dir.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--data-dir", type=Path, default=None, help="state folder (default $SPRUCE_DATA_DIR or .spruce)"
    )
    p.add_argument("--no-worker", action="store_true", help="serve the API only (workers run elsewhere)")
    p.set_defaults(func=run_serve)

    w = sub.add_parser("worker", help="run one Celery worker (one per GPU: set CUDA_VISIBLE_DEVICES)")
    w.add_argument("--data-dir", type=Path, default=None)
    w.add_argument("celery_args", nargs=argparse.REMAINDER, help="extra arguments for `celery worker`")
    w.set_defaults(func=run_worker)

    m = sub.add_parser("migrate", help="apply database migrations (alembic upgrade head)")
    m.add_argument("--data-dir", type=Path, default=None)
    m.set_defaults(func=run_migrate)


def use_data_dir(data_dir: Path | None) -> None:
    """Point this process (and the processes it starts) at ``data_dir``."""
    from spruce.common.settings import get_settings

    if data_dir is not None:
        os.environ["SPRUCE_DATA_DIR"] = str(data_dir.expanduser().resolve())
        get_settings.cache_clear()


def run_migrate(args: argparse.Namespace) -> int:
    from spruce.common.db import upgrade
    from spruce.common.settings import get_settings

    use_data_dir(args.data_dir)
    upgrade(get_settings().resolved_database_url)
    return 0


def run_worker(args: argparse.Namespace) -> int:
    use_data_dir(args.data_dir)
    extra = [a for a in args.celery_args if a != "--"]
    os.execv(sys.executable, [sys.executable, *WORKER_ARGS, *extra])
    return 0  # not reached


def requeue_orphans(url: str) -> list[str]:
    """Jobs left ``running`` by a previous `spruce serve` (its only worker is gone): queue them again."""
    from sqlalchemy import select

    from spruce.common.db import session_scope
    from spruce.common.jobs import set_status
    from spruce.common.models import Job
    from spruce.common.states import JobStatus

    with session_scope(url) as session:
        jobs = session.scalars(select(Job).where(Job.status == JobStatus.RUNNING)).all()
        for job in jobs:
            set_status(session, job, JobStatus.QUEUED, "requeued: the worker stopped while the job ran")
        return [job.id for job in jobs]


def first_key(url: str) -> str | None:
    """A key for team 'default' when the database has none yet (printed once, never stored)."""
    from sqlalchemy import func, select

    from spruce.common.db import session_scope
    from spruce.common.keys import create_key
    from spruce.common.models import ApiKey

    with session_scope(url) as session:
        if session.scalar(select(func.count()).select_from(ApiKey)):
            return None
        return create_key(session, "default", "admin").secret


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from spruce.common.db import upgrade
    from spruce.common.queue import enqueue, make_celery
    from spruce.common.settings import get_settings
    from spruce.worker.liveness import start_sweeper

    use_data_dir(args.data_dir)
    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    os.environ["SPRUCE_DATA_DIR"] = str(data_dir)  # the worker must see the same folder whatever its cwd
    (data_dir / "models").mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    upgrade(url)

    supervisor = sweeper = None
    # SIGTERM (docker stop, systemd, kill) ends serve as Ctrl-C does: uvicorn stops serving, then
    # raises the signal again once it is done, which lands here and unwinds to the `finally`
    # below that stops the worker (the default action would end serve on the spot, its worker
    # left running on its own).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if not args.no_worker:
            orphans = requeue_orphans(url)
            if orphans:
                producer = make_celery(settings)
                for job_id in orphans:
                    enqueue(producer, settings, job_id)
                log.info("requeued %d interrupted job(s): %s", len(orphans), ", ".join(orphans))
            supervisor = WorkerSupervisor(
                [*WORKER_ARGS, "--without-gossip", "--without-mingle"],
                data_dir / "logs" / "worker.log",
                settings,
            ).start()
            # The stuck-job sweep runs here too, so it runs while no worker is alive.
            sweeper = start_sweeper(settings, name="spruce-serve-sweeper")

        config = uvicorn.Config(
            "spruce.api.app:create_app", factory=True, host=args.host, port=args.port, log_level="info"
        )
        server = uvicorn.Server(config)
        key = first_key(url)
        shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        lines = [
            f"Spruce is running at http://{shown_host}:{args.port}  (API docs: /docs)",
            f"data: {data_dir}  (models under {data_dir / 'models'} may be named by path)",
        ]
        if supervisor is not None and supervisor.proc is not None:
            lines.append(f"worker: pid {supervisor.proc.pid}, log {data_dir / 'logs' / 'worker.log'}")
        if key:
            lines += ["A first API key (team 'default'); it is shown only once:", key]
        else:
            lines.append("create an API key with: spruce keys create --team NAME")
        print("\n".join(lines), flush=True)
        server.run()
    except KeyboardInterrupt:
        pass  # uvicorn re-raises Ctrl-C (and SIGTERM, see above) after its graceful shutdown
    finally:
        if sweeper is not None:
            sweeper.stop()
        if supervisor is not None:
            supervisor.stop()
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
