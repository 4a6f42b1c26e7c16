"""Service settings, read from ``SPRUCE_*`` environment variables (and an optional ``.env``).

Nothing is read at import time: call ``get_settings()`` (cached) where a setting is needed, or
build ``Settings(...)`` explicitly in tests. Every setting has a default that gives the
default mode: SQLite, a filesystem broker and a local artifact folder, all under ``data_dir``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """One process's configuration; see docs/service.md for the table of settings."""

    model_config = SettingsConfigDict(env_prefix="SPRUCE_", env_file=".env", extra="ignore")

    # Default mode keeps everything here: spruce.db, broker/, artifacts/, models/.
    data_dir: Path = Path(".spruce")

    # Rows. Empty means SQLite at <data_dir>/spruce.db.
    database_url: str = ""

    # Queue. Empty means kombu's filesystem transport under <data_dir>/broker (no server needed).
    broker_url: str = ""
    queue: str = "spruce"
    broker_timeout: float = Field(
        default=3.0, gt=0, description="seconds to wait for the broker before giving up"
    )

    # Object storage for artifacts and uploaded datasets.
    storage: Literal["local", "s3"] = "local"
    artifacts_dir: Path | None = None  # local backend; default <data_dir>/artifacts
    s3_bucket: str = "spruce"
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None  # any S3-compatible server (MinIO, moto, ...)
    s3_public_endpoint_url: str | None = None  # host in presigned URLs, when clients see another one
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None  # None: boto3's usual credential chain
    s3_secret_access_key: SecretStr | None = None
    s3_presign: bool = True  # downloads answer 307 to a presigned URL instead of streaming through the API
    s3_presign_expiry: int = Field(default=3600, gt=0)
    # Links the dashboard follows without a bearer header: a presigned S3 URL, or (local storage,
    # or S3 with presign off) an API URL signed with HMAC-SHA256 under this secret. Empty: a
    # random secret kept in <data_dir>/signing.key (set it when several API hosts share no disk).
    signing_secret: SecretStr | None = None
    download_link_expiry: int = Field(default=300, gt=0, description="seconds a signed API link is valid")

    # What a job may ask for.
    model_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    # s3:// model URIs must lie under one of these "s3://bucket/prefix" roots (empty: any bucket
    # the credentials read, except the service's own jobs/ and datasets/ areas).
    model_s3_roots: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allow_hub_models: bool = True
    max_samples: int = Field(default=1024, ge=1)
    max_seq_len: int = Field(default=4096, ge=8)
    max_eval_windows: int = Field(default=1000, ge=1)
    max_upload_mb: int = Field(default=256, ge=1)

    # Operations (docs/service.md, "Metrics and logs").
    log_format: Literal["json", "text"] = "text"  # json: one object per line, for log collectors
    metrics_token: SecretStr | None = None  # set: GET /metrics needs "Authorization: Bearer <token>"

    # Who may call, how often (docs/service.md, "Security and limits").
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)  # empty: no CORS headers
    rate_limit_per_minute: int = Field(default=6000, ge=0, description="requests per key; 0: no limit")
    rate_limit_burst: int = Field(default=1000, ge=1, description="requests a key may send at once")

    # Fair sharing between teams (docs/service.md, "Fair sharing"); 0: no limit. Per-team
    # overrides are set with `spruce teams limits`.
    team_max_queued: int = Field(default=1000, ge=0, description="queued jobs a team may hold")
    team_max_running: int = Field(default=0, ge=0, description="jobs of one team running at once")
    team_max_stored_bytes: int = Field(
        default=0, ge=0, description="bytes of artifacts and datasets a team may keep"
    )
    retention_days: int = Field(
        default=0, ge=0, description="remove artifacts of jobs finished this many days ago; 0: keep"
    )
    retention_interval: float = Field(
        default=3600.0, gt=0, description="seconds between each worker's retention passes"
    )
    defer_interval: float = Field(
        default=5.0, gt=0, description="seconds before a message that found no job it may start looks again"
    )

    # Worker.
    device: str | None = None  # None: cuda when available, else cpu
    # A job's CPU work yields to the API and the database where they share the machine
    # (`spruce serve`, a small host): status polls stay fast while a job runs.
    worker_nice: int = Field(default=10, ge=0, le=19, description="the worker process's niceness increment")
    work_dir: Path | None = None  # scratch space for a running job; None: the system temp folder
    cache_dir: Path | None = None  # the engine's model cache (core.models); None: ~/.cache/spruce
    task_time_limit: int = Field(
        default=6 * 3600, gt=0, description="seconds a job may run before it is failed"
    )
    max_retries: int = Field(
        default=2, ge=0, description="retries after a system fault (attempts = 1 + this)"
    )
    retry_backoff: float = Field(
        default=30.0, ge=0, description="first retry delay in seconds; doubles each time"
    )
    progress_interval: float = Field(
        default=1.0, ge=0, description="seconds between progress writes to the row"
    )
    cancel_check_interval: float = Field(
        default=1.0, ge=0, description="seconds between reads of the cancel flag"
    )
    # Reliability (docs/service.md, "Reliability").
    dry_run: bool = Field(
        default=False, description="walk each job through its stages without loading a model"
    )
    max_attempts: int = Field(
        default=3, ge=1, description="deliveries a job may start before it is failed as worker_lost"
    )
    heartbeat_interval: float = Field(
        default=10.0, gt=0, description="seconds between a running job's heartbeat writes"
    )
    heartbeat_timeout: float = Field(
        default=120.0, gt=0, description="a running job silent this long has lost its worker"
    )
    sweep_interval: float = Field(
        default=30.0, gt=0, description="seconds between each worker's sweeps for stuck jobs"
    )
    visibility_timeout: int = Field(
        default=900, gt=0, description="Redis: seconds before an unacked message is delivered again"
    )
    checkpoints: bool = Field(
        default=True, description="save each finished layer so a lost job resumes where it stopped"
    )

    @field_validator("model_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        # SPRUCE_MODEL_ROOTS=/models:/mnt/shared, like PATH
        if isinstance(value, str):
            return [Path(p) for p in value.split(os.pathsep) if p.strip()]
        return value

    @field_validator("cors_origins", "model_s3_roots", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        # SPRUCE_CORS_ORIGINS=https://a.example,https://b.example
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'spruce.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        """Where the filesystem transport keeps messages (used only when broker_url is empty)."""
        return (self.data_dir / "broker").resolve()

    @property
    def resolved_artifacts_dir(self) -> Path:
        return (self.artifacts_dir or self.data_dir / "artifacts").resolve()

    @property
    def resolved_model_roots(self) -> list[Path]:
        """Folders local model paths must lie under: SPRUCE_MODEL_ROOTS plus <data_dir>/models."""
        roots = [*self.model_roots, self.data_dir / "models"]
        return [r.expanduser().resolve() for r in roots]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()
