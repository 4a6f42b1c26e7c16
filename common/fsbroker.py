"""kombu's filesystem transport, made to ride out a queue folder that is briefly missing.

The stock transport lists its folder on every poll; when the folder is gone (moved, deleted, an
unmounted volume) ``os.listdir`` raises ``FileNotFoundError``, which Celery does not count as a
connection error, and the worker exits with "Unrecoverable error". Here a consumer that cannot
read the folder sees an empty queue and polls again (with a warning at most once a minute), so
it takes messages again as soon as the folder is back. Sending still fails while the folder is
missing: the API answers 503 and ``/readyz`` reports the broker failing.

Celery loads the class by name (``broker_transport`` in common/queue.py), so this module is
imported only where a filesystem broker is used.
"""

from __future__ import annotations

import logging
import time
from queue import Empty
from typing import Any

from kombu.transport import filesystem

log = logging.getLogger(__name__)

WARN_EVERY_S = 60.0


class FolderChannel(filesystem.Channel):
    _warned_at = 0.0

    def _unreadable(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - FolderChannel._warned_at >= WARN_EVERY_S:
            FolderChannel._warned_at = now
            log.warning(
                "the broker's queue folder cannot be read (%s); polling until it is back",
                exc.strerror or exc.__class__.__name__,
            )

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        try:
            return super()._get(queue)
        except OSError as exc:
            self._unreadable(exc)
            raise Empty() from exc

    def _size(self, queue: str) -> int:
        try:
            return int(super()._size(queue))
        except OSError as exc:
            self._unreadable(exc)
            return 0

    def _purge(self, queue: str) -> int:
        try:
            return int(super()._purge(queue))
        except OSError as exc:
            self._unreadable(exc)
            return 0


class FolderTransport(filesystem.Transport):
    Channel = FolderChannel
