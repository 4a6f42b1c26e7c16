"""Database rows: teams, API keys, jobs, job events, artifacts, uploaded datasets, sweeps.

The job row is the source of truth for a job's state and progress; status changes go through
``common.jobs`` only (see ``common.states`` for the allowed transitions).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names, so that migrations can refer to them on every database.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def storable(text: str) -> bool:
    """False for a string Postgres text cannot hold (a NUL character): it names nothing stored,
    and comparing a column with it raises in the driver, so lookups answer "not found" first."""
    return "\x00" not in text


def new_id(prefix: str) -> str:
    """A public id such as ``job_3f9c...``: the prefix says what it names, 96 random bits."""
    return f"{prefix}_{secrets.token_hex(12)}"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database (SQLite drops the zone on its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use common.models.utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("team"))
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Per-team overrides of the SPRUCE_TEAM_MAX_* defaults (None: the default; 0: no limit);
    # set with `spruce teams limits` (common/quotas.py).
    max_queued: Mapped[int | None] = mapped_column(Integer, default=None)
    max_running: Mapped[int | None] = mapped_column(Integer, default=None)
    max_stored_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # When a worker last started one of its jobs: the fair scheduler's tie-break (common/fair.py).
    last_started_at: Mapped[datetime | None] = mapped_column(default=None)

    keys: Mapped[list[ApiKey]] = relationship(back_populates="team")


class ApiKey(Base):
    """An API key, stored as the sha256 of the secret; ``prefix`` is shown to people to tell keys apart."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    team: Mapped[Team] = relationship(back_populates="keys")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_team_created", "team_id", "created_at", "id"),
        # The fair scheduler's scan: queued (or running) jobs per team, oldest first.
        Index("ix_jobs_status_team_created", "status", "team_id", "created_at"),
        # A retried POST with the same Idempotency-Key finds its job (per team: keys are the client's).
        UniqueConstraint("team_id", "idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    submitted_by: Mapped[str] = mapped_column(String(100))  # the key's name when submitted
    spec: Mapped[dict[str, Any]] = mapped_column()  # the body as submitted

    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    stage: Mapped[str | None] = mapped_column(String(32), default=None)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    layer: Mapped[int | None] = mapped_column(Integer, default=None)
    layers: Mapped[int | None] = mapped_column(Integer, default=None)
    eta_seconds: Mapped[int | None] = mapped_column(Integer, default=None)
    message: Mapped[str | None] = mapped_column(Text, default=None)  # the engine's last progress line

    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)  # hostname of the last runner
    # The running worker refreshes this; a running job whose heartbeat is old has lost its worker.
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    resumes: Mapped[int] = mapped_column(Integer, default=0)  # times it continued from a checkpoint
    retries: Mapped[int] = mapped_column(Integer, default=0)  # re-queued after a system fault
    # A queued job does not start before this (a retry's backoff); None: at once.
    run_after: Mapped[datetime | None] = mapped_column(default=None)
    # DELETE /v1/jobs/{id} on a running job: hidden from the API, removed once its worker stops.
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)  # sha256 of the body
    device: Mapped[str | None] = mapped_column(String(32), default=None)
    # A CUDA worker's last heartbeat reading of the job's GPU memory (worker/liveness.py:
    # gpu_memory); None on a CPU. GET /metrics serves it for running jobs.
    gpu_memory: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # The sweep that made this job (POST /v1/sweeps), None for a job submitted alone.
    sweep_id: Mapped[str | None] = mapped_column(
        ForeignKey("sweeps.id", ondelete="SET NULL"), default=None, index=True
    )
    # The queue it was submitted to: only that queue's workers start it (None: any worker).
    queue: Mapped[str | None] = mapped_column(String(200), default=None)

    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    results: Mapped[dict[str, Any] | None] = mapped_column(default=None)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    team: Mapped[Team] = relationship()
    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", order_by="JobEvent.id", cascade="all, delete-orphan"
    )
    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="job", order_by="Artifact.name", cascade="all, delete-orphan"
    )


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    type: Mapped[str] = mapped_column(String(32))  # status | stage | retry | log
    stage: Mapped[str | None] = mapped_column(String(32), default=None)
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None] = mapped_column(default=None)

    job: Mapped[Job] = relationship(back_populates="events")


class Artifact(Base):
    """One file a job produced, stored at ``storage_key`` in object storage."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(500))  # path relative to the job's folder: hf/config.json
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Removed from storage by retention (SPRUCE_RETENTION_DAYS): a download answers 410.
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)

    job: Mapped[Job] = relationship(back_populates="artifacts")


class Dataset(Base):
    """An uploaded .txt or .jsonl file that jobs of the same team may name as a text source."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ds"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(String(300))
    format: Mapped[str] = mapped_column(String(8))  # txt | jsonl
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    records: Mapped[int] = mapped_column(Integer)  # lines of a .jsonl, paragraphs of a .txt
    storage_key: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Sweep(Base):
    """One job body run at several targets (POST /v1/sweeps); its jobs carry its id.

    Only what the children cannot tell is stored: the grid (``children``), the calibration they
    share and the cancel request; status, progress and the table are derived from the children
    (``common.sweeps``).
    """

    __tablename__ = "sweeps"
    __table_args__ = (
        Index("ix_sweeps_team_created", "team_id", "created_at", "id"),
        UniqueConstraint("team_id", "idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("sw"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    submitted_by: Mapped[str] = mapped_column(String(100))
    body: Mapped[dict[str, Any]] = mapped_column()  # the sweep's body as submitted
    # One entry per child job, in the grid's order: {"job", "target", "pruner", "preset"}.
    children: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    calibration: Mapped[dict[str, Any]] = mapped_column()  # every child's calibration section
    text: Mapped[str | None] = mapped_column(String(300), default=None)  # the first evaluation text
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
