"""What ``/readyz`` checks, each the way a request would use it, all within a second.

- database: take the write lock and update a row, rolled back (``common.dbwait.probe_write``);
- broker: the queue takes a message now (``common.queue.check_broker``);
- storage: put and delete a probe object (``Storage.check``).

The checks run concurrently, each in a daemon thread; ``/readyz`` waits at most ``WAIT_S`` for
them, and a check still running then counts as failing. A check that hangs (a host that drops
packets) is not started again while it runs: later calls wait on the same run, so a hung
dependency holds one thread, not one per call. Failures are logged with their cause; the answer
carries only the words ``ok`` and ``failing``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any

from spruce.common.dbwait import probe_write
from spruce.common.queue import check_broker
from spruce.common.settings import Settings
from spruce.common.storage import Storage

log = logging.getLogger(__name__)

WAIT_S = 0.8  # the whole answer stays under a second
DB_WAIT_S = 0.5  # how long the database probe waits for the write lock
BROKER_WAIT_S = 0.5
OK, FAILING = "ok", "failing"


class Probe:
    """One check, run in a thread of its own; at most one run at a time."""

    def __init__(self, name: str, check: Callable[[], None]) -> None:
        self.name, self.check = name, check
        self._lock = threading.Lock()
        self._running: Future[None] | None = None

    def start(self) -> Future[None]:
        with self._lock:
            if self._running is None or self._running.done():
                future: Future[None] = Future()
                threading.Thread(
                    target=self._run, args=(future,), name=f"readyz-{self.name}", daemon=True
                ).start()
                self._running = future
            return self._running

    def _run(self, future: Future[None]) -> None:
        try:
            self.check()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)


class Readiness:
    """The probes of one app (``ServiceContext.readiness``)."""

    def __init__(
        self, settings: Settings, storage: Callable[[], Storage], producer: Callable[[], Any]
    ) -> None:
        url = settings.resolved_database_url

        def broker() -> None:
            producer()  # the app's producer, configured once (that makes a filesystem broker's folders)
            check_broker(settings, min(BROKER_WAIT_S, settings.broker_timeout))

        self.probes = [
            Probe("database", lambda: probe_write(url, DB_WAIT_S)),
            Probe("broker", broker),
            Probe("storage", lambda: storage().check()),
        ]

    def run(self, timeout: float = WAIT_S) -> dict[str, str]:
        """``{name: "ok" | "failing"}`` for every check, within ``timeout`` seconds."""
        futures = {probe.name: probe.start() for probe in self.probes}
        wait(futures.values(), timeout)
        checks: dict[str, str] = {}
        for name, future in futures.items():
            if not future.done():
                log.warning("not ready: %s did not answer within %.1f s", name, timeout)
                checks[name] = FAILING
            elif (exc := future.exception()) is not None:
                cause = str(exc).strip().splitlines()
                log.warning("not ready: %s: %s: %s", name, exc.__class__.__name__, cause[0] if cause else "")
                checks[name] = FAILING
            else:
                checks[name] = OK
        return checks
