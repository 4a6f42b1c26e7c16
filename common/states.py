"""Job statuses and the one table of allowed transitions between them."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = JobStatus

# from -> the statuses it may move to. running -> queued is a retry after a system fault;
# queued -> failed is a job that could not be enqueued (broker down) or whose retries ran out.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.FAILED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.QUEUED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}

TERMINAL: frozenset[JobStatus] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


class IllegalTransition(Exception):
    """A status change that the table does not allow (or a status that does not exist)."""

    def __init__(self, current: str, new: str) -> None:
        super().__init__(f"a job cannot go from {current!r} to {new!r}")
        self.current = current
        self.new = new


def check_transition(current: str, new: str) -> JobStatus:
    """Return ``new`` as a ``JobStatus`` if ``current -> new`` is allowed, else raise ``IllegalTransition``."""
    try:
        cur, nxt = JobStatus(current), JobStatus(new)
    except ValueError as exc:
        raise IllegalTransition(current, new) from exc
    if nxt not in TRANSITIONS[cur]:
        raise IllegalTransition(current, new)
    return nxt


def is_terminal(status: str) -> bool:
    return JobStatus(status) in TERMINAL
