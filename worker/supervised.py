"""A worker started by `spruce serve` never outlives it.

Serve names itself in ``SPRUCE_SUPERVISOR_PID``. The worker then asks Linux to kill it when its
parent goes (``prctl(PR_SET_PDEATHSIG, SIGKILL)``: immediate, even when serve itself was killed
with SIGKILL), and a watchdog thread checks its parent's pid every second as well (other systems,
or a parent that died before the ``prctl``). The job it was running stays ``running`` on its row;
the next serve queues it again and it resumes from its checkpoint.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading

log = logging.getLogger(__name__)

PARENT_ENV = "SPRUCE_SUPERVISOR_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 1.0


def set_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Have Linux send ``sig`` to this process when the thread that started it ends; False
    where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def watch_parent(env: dict[str, str] | None = None) -> int | None:
    """When ``SPRUCE_SUPERVISOR_PID`` is set, end this process once that parent is gone; returns
    the pid watched (None: not supervised)."""
    raw = (env if env is not None else os.environ).get(PARENT_ENV, "")
    if not raw.isdigit():
        return None
    parent = int(raw)
    set_death_signal()
    if os.getppid() != parent:  # it died before the prctl above could take effect
        _parent_gone(parent)
    threading.Thread(target=_poll, args=(parent,), name="parent-watchdog", daemon=True).start()
    return parent


def _poll(parent: int) -> None:
    while True:
        threading.Event().wait(POLL_S)
        if os.getppid() != parent:
            _parent_gone(parent)


def _parent_gone(parent: int) -> None:
    log.error("spruce serve (pid %d) that started this worker is gone; exiting", parent)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)
