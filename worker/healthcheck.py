"""`python -m spruce.worker.healthcheck`: exit 0 when a worker process on this host is alive, else 1.

Each worker process, once ready, rewrites a small file (``ALIVE_DIR/<pid>.json``) every
``BEAT_S`` seconds from a thread of its own, and removes it when it shuts down. The check
passes when some file is younger than ``--max-age`` seconds and its process exists. The beat
runs beside the job (the solo pool runs a job in the worker's main thread, where Celery's own
``inspect ping`` would go unanswered for hours), and it does not ask the database or the broker:
an outage there is not cured by restarting workers, and the worker rides it out by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ALIVE_DIR = Path(tempfile.gettempdir()) / "spruce-worker"
BEAT_S = 5.0
MAX_AGE_S = 30.0


class AliveFile:
    """This process's beat file, rewritten every ``interval`` seconds until ``stop()``."""

    def __init__(self, path: Path, interval: float = BEAT_S) -> None:
        self.path, self.interval = path, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="alive-file", daemon=True)

    @classmethod
    def for_this_process(cls, folder: Path = ALIVE_DIR) -> AliveFile:
        return cls(folder / f"{os.getpid()}.json")

    def start(self) -> AliveFile:
        self.beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.path.unlink(missing_ok=True)

    def beat(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}))
        tmp.replace(self.path)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except OSError:  # a full /tmp for a moment: the next beat may work
                continue


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def alive(folder: Path = ALIVE_DIR, max_age: float = MAX_AGE_S, now: float | None = None) -> list[int]:
    """Pids of the workers on this host whose beat is fresh."""
    now = time.time() if now is None else now
    pids: list[int] = []
    for path in folder.glob("*.json"):
        try:
            age = now - path.stat().st_mtime
            pid = int(json.loads(path.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being rewritten, or not ours
        if age <= max_age and _exists(pid):
            pids.append(pid)
    return sorted(pids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spruce.worker.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--max-age", type=float, default=MAX_AGE_S, help="seconds a beat stays fresh")
    parser.add_argument("--dir", type=Path, default=ALIVE_DIR, help="where the workers write their beats")
    args = parser.parse_args(argv)
    pids = alive(args.dir, args.max_age)
    if pids:
        print(f"ok: worker pid {', '.join(map(str, pids))}")
        return 0
    print(f"no worker on this host has beaten within {args.max_age:.0f}s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
