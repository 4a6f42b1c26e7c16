"""`spruce serve`'s worker, kept running: a worker that dies is started again, with backoff.

The API never goes down with its worker. When the worker process exits while serve runs (killed
by the kernel for memory, ``kill -9``, a crash), the supervisor logs it, queues the job it was
running again at once (``worker.liveness.requeue_lost``: it resumes from its checkpoint on the
next worker) and starts a new worker after 1, 2, 4 ... up to 60 seconds (back to 1 once a worker
has lived a minute). The worker runs in a session of its own (a Ctrl-C in the terminal reaches
serve alone, which stops the worker in order) and dies with serve (worker/supervised.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from spruce.worker.supervised import PARENT_ENV

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
HEALTHY_AFTER_S = 60.0  # a worker that lived this long resets the backoff
STOP_GRACE_S = 30.0  # an idle worker with torch loaded needs ~10 s to exit on a busy machine


class WorkerSupervisor:
    """Runs ``command`` as serve's worker until ``stop()``; restarts it whenever it exits."""

    def __init__(self, command: list[str], log_path: Path, settings: Any) -> None:
        self.name = f"serve-{os.getpid()}@{socket.gethostname()}"  # the Celery node name, every restart
        self.command = [*command, "-n", self.name]
        self.log_path, self.settings = log_path, settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._started = threading.Event()
        # The thread that starts each worker lives as long as serve: Linux's parent-death signal
        # follows the thread that forked the worker, not the process.
        self._thread = threading.Thread(target=self._loop, name="worker-supervisor", daemon=True)

    def start(self) -> WorkerSupervisor:
        self._thread.start()
        self._started.wait(30)
        return self

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        with self._lock:
            if self._stop.is_set():
                return None
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen(
                    [sys.executable, *self.command],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env={**os.environ, PARENT_ENV: str(os.getpid())},
                )
            return self.proc

    def _loop(self) -> None:
        backoff = BACKOFF_FIRST_S
        while not self._stop.is_set():
            try:
                proc = self._spawn()
            except OSError as exc:
                log.error("could not start the worker: %s", exc)
                proc = None
            self._started.set()
            if proc is None and self._stop.is_set():
                return
            began = time.monotonic()
            code = proc.wait() if proc is not None else None
            if self._stop.is_set():
                return
            lived = time.monotonic() - began
            if lived >= HEALTHY_AFTER_S:
                backoff = BACKOFF_FIRST_S
            self.restarts += 1
            log.error(
                "the worker (pid %s) exited with code %s after %.0f s; restart %d in %.0f s (log: %s)",
                proc.pid if proc is not None else "-",
                code,
                lived,
                self.restarts,
                backoff,
                self.log_path,
            )
            self._requeue(code)
            if self._stop.wait(backoff):
                return
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    def _requeue(self, code: int | None) -> None:
        """The dead worker's job goes back on the queue before the next worker starts."""
        from spruce.common.queue import enqueue, make_celery
        from spruce.common.storage import build_storage
        from spruce.worker.checkpoint import discard
        from spruce.worker.liveness import requeue_lost

        try:
            producer = make_celery(self.settings, name="spruce-supervisor")
            storage = build_storage(self.settings)
            done = requeue_lost(
                self.settings,
                self.name,
                send=lambda job_id: enqueue(producer, self.settings, job_id),
                on_failed=lambda job_id: discard(storage, job_id),
                cause=f"its process exited (code {code})",
            )
        except Exception as exc:  # database or broker away: the stuck-job sweep catches up later
            log.warning("could not queue the lost worker's job again yet: %s", exc)
            return
        for job_id, outcome in done.items():
            log.warning("job %s of the lost worker: %s", job_id, outcome)

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Warm shutdown of the worker's process group (SIGTERM); if a job keeps it busy past
        ``grace`` seconds, Celery's cold shutdown (SIGQUIT), then SIGKILL. A job interrupted this
        way is queued again by the next `spruce serve` (``requeue_orphans``)."""
        with self._lock:
            self._stop.set()
            proc = self.proc
        if proc is not None and proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning(
                    "worker still busy after %.0fs; stopping it (its job restarts on the next serve)", grace
                )
                _signal_group(proc, signal.SIGQUIT)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait()
        _signal_group(proc, signal.SIGKILL, only_others=True)
        self._thread.join(timeout=10)


def _signal_group(proc: subprocess.Popen[bytes] | None, sig: int, only_others: bool = False) -> None:
    """Signal the worker's process group (the worker leads it; anything it started is in it).
    ``only_others``: the worker has exited; end whatever it left behind in its group."""
    if proc is None:
        return
    if only_others and proc.poll() is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
