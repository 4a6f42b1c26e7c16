"""Request dependencies: the service context, a DB session, and the caller (from the API key)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from spruce.api.errors import ApiError
from spruce.api.limits import MemoryLimiter, Rate, RateLimiter, RedisLimiter, retry_after_header
from spruce.api.links import signing_key
from spruce.api.readiness import Readiness
from spruce.common.db import POOL_CAPACITY, session_factory
from spruce.common.dbwait import lock_wait
from spruce.common.keys import authenticate
from spruce.common.models import ApiKey, utcnow
from spruce.common.queue import make_celery
from spruce.common.settings import Settings
from spruce.common.storage import Storage, build_storage

LAST_USED_RESOLUTION = timedelta(minutes=1)  # write last_used_at at most this often per key
LAST_USED_WAIT_S = 0.2  # how long that write may wait for the database's write lock

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    """What one app instance talks to; built once per app, connections made on first use."""

    settings: Settings
    _cache: dict[str, Any] = field(default_factory=dict)

    @property
    def database_url(self) -> str:
        return self.settings.resolved_database_url

    @cached_property
    def storage(self) -> Storage:
        return build_storage(self.settings)

    @cached_property
    def celery(self) -> Any:
        return make_celery(self.settings, name="spruce-api")

    @cached_property
    def limiter(self) -> RateLimiter | None:
        """Per-key request budget: shared through Redis when the broker is Redis, else per process."""
        s = self.settings
        if s.rate_limit_per_minute == 0:
            return None
        rate = Rate(s.rate_limit_per_minute, s.rate_limit_burst)
        if s.broker_url.startswith(("redis://", "rediss://")):
            return RedisLimiter(s.broker_url, rate)
        return MemoryLimiter(rate)

    @cached_property
    def db_slots(self) -> anyio.Semaphore:
        """Requests using the database at once in this process (see get_session). anyio's, not
        asyncio's: it binds to no event loop, and test clients run one loop per client."""
        return anyio.Semaphore(POOL_CAPACITY)

    @cached_property
    def signing_key(self) -> bytes:
        return signing_key(self.settings)

    @cached_property
    def readiness(self) -> Readiness:
        return Readiness(self.settings, storage=lambda: self.storage, producer=lambda: self.celery)

    @cached_property
    def last_used_tries(self) -> dict[str, float]:
        """key id -> time.monotonic() of this process's last try to write its last_used_at."""
        return {}


@dataclass(frozen=True)
class Caller:
    key_id: str
    key_name: str
    key_prefix: str
    team_id: str
    team_name: str


async def get_ctx(request: Request) -> ServiceContext:
    # async: FastAPI runs a sync dependency in a worker thread, a hop per request for an attribute
    ctx: ServiceContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[ServiceContext, Depends(get_ctx)]


async def get_session(ctx: CtxDep) -> AsyncIterator[Session]:
    """A session for one request, admitted only while a pooled connection is free for it.

    Sync routes and dependencies run in a pool of worker threads, and one request hops between
    threads (auth, route, response validation) while its session keeps its connection. Without
    admission, 100 concurrent requests deadlocked one process: every thread blocked waiting for a
    connection while the requests holding all connections waited for a thread. The semaphore is
    awaited on the event loop (no thread held) and bounds the sessions to the pool's capacity,
    so checking out a connection never blocks.
    """
    async with ctx.db_slots:
        session = session_factory(ctx.database_url)()
        try:
            yield session
        finally:
            await run_in_threadpool(session.close)


SessionDep = Annotated[Session, Depends(get_session)]


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "invalid_api_key", message, headers={"WWW-Authenticate": "Bearer"})


def check_rate(ctx: ServiceContext, key_id: str) -> None:
    """429 with Retry-After once the key has spent its budget (see api.limits)."""
    limiter = ctx.limiter
    if limiter is None:
        return
    wait = limiter.hit(key_id)
    if wait > 0:
        s = ctx.settings
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests with this API key: the limit is {s.rate_limit_per_minute} per minute "
            f"in bursts of up to {s.rate_limit_burst}; retry in {retry_after_header(wait)} s",
            headers={"Retry-After": retry_after_header(wait)},
        )


def get_caller(
    session: SessionDep,
    ctx: CtxDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Caller:
    if not authorization:
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise _unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    key = authenticate(session, secret.strip())
    if key is None:
        raise _unauthorized("invalid or revoked API key")
    check_rate(ctx, key.id)
    caller = Caller(
        key_id=key.id, key_name=key.name, key_prefix=key.prefix, team_id=key.team_id, team_name=key.team.name
    )
    touch_last_used(session, ctx, key)
    return caller


def touch_last_used(session: Session, ctx: ServiceContext, key: ApiKey) -> None:
    """Record that ``key`` was used: at most once a minute per key, and best effort.

    Bookkeeping must not hold a request: the write waits at most ``LAST_USED_WAIT_S`` for the
    database's write lock (another process may hold it for long), and a write that fails is
    logged, rolled back and not tried again by this process for a minute.
    """
    now = utcnow()
    if key.last_used_at is not None and now - key.last_used_at <= LAST_USED_RESOLUTION:
        return
    tries = ctx.last_used_tries
    tried = tries.get(key.id)
    if tried is not None and time.monotonic() - tried < LAST_USED_RESOLUTION.total_seconds():
        return
    tries[key.id] = time.monotonic()
    try:
        with lock_wait(session.connection(), LAST_USED_WAIT_S):
            key.last_used_at = now
            session.flush()  # the write takes the lock here; the commit below waits for nothing
        session.commit()
    except DBAPIError as exc:
        session.rollback()
        log.info("last_used_at of key %s not recorded (%s)", key.id, exc.__class__.__name__)
    if len(tries) > 10_000:  # forget old tries (bounded memory with many keys)
        tries.clear()


CallerDep = Annotated[Caller, Depends(get_caller)]
AuthorizationHeader = Annotated[str | None, Header(include_in_schema=False)]
T = TypeVar("T")


async def read_in_one_hop(
    ctx: ServiceContext, authorization: str | None, read: Callable[[Session, Caller], T]
) -> T:
    """``read(session, caller)`` with the admission, authentication, session and close of
    ``SessionDep`` and ``CallerDep``, in one worker-thread hop instead of three.

    For the routes pollers hit (a job's status, the job list): each hop is a switch between the
    event loop and a thread, and at 100 polls a second the API process's CPU was the bottleneck
    (docs/service.md, Latency).
    """
    async with ctx.db_slots:
        return await run_in_threadpool(_read_as_caller, ctx, authorization, read)


def _read_as_caller(
    ctx: ServiceContext, authorization: str | None, read: Callable[[Session, Caller], T]
) -> T:
    with session_factory(ctx.database_url)() as session:
        return read(session, get_caller(session, ctx, authorization))
