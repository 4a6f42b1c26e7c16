"""``Idempotency-Key`` on ``POST /v1/jobs``: a retried submission finds the job it already made.

The key is the client's, scoped to its team (the unique constraint on (team_id,
idempotency_key) settles concurrent retries: one insert wins, the others read its job). The
job row also keeps a hash of the body, so that a key reused for a different job is refused
rather than silently answered with the wrong one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from spruce.api.errors import ApiError
from spruce.common.models import Job

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"  # the answer is a stored job, not a new one (as Stripe says it)
PATTERN = r"^[!-~]{1,200}$"  # printable ASCII without spaces; fits jobs.idempotency_key (200)


def request_hash(body: dict[str, Any]) -> str:
    """sha256 of the body as submitted, canonical (key order and whitespace do not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def find(session: Session, team_id: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.team_id == team_id, Job.idempotency_key == key))


def check_same_request(job: Job, key: str, body_hash: str | None) -> None:
    """409 when ``key`` already named a job with a different body."""
    if job.request_hash != body_hash:
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"{HEADER} {key!r} was already used for job {job.id} with a different body; "
            "use a new key for a new job",
            HEADER,
            extra={"job": job.id},
        )


def release(session: Session, job: Job, key: str) -> bool:
    """Detach ``key`` from ``job`` (compare-and-set, so two retries cannot both take it over)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.idempotency_key == key)
        .values(idempotency_key=None)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
