"""Request limits: the size of a request body (413) and the request rate of one API key (429).

Body sizes are checked by an ASGI middleware, before FastAPI parses anything: a multipart upload
is otherwise spooled to disk in full before the route runs, so a route-level check would come
after the harm. Rates use GCRA (the "generic cell rate algorithm", a token bucket kept as one
timestamp per key): a steady ``per_minute`` rate with bursts of ``burst`` requests. The same
algorithm runs in this process's memory or, when the broker is Redis, in Redis, so that every
API process behind a load balancer shares one budget per key.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spruce.api.errors import error_response

log = logging.getLogger(__name__)

MIB = 1 << 20
# A job body is a few hundred bytes; anything near this is not a job.
MAX_JSON_BODY = 1 * MIB
# Multipart framing and the form's other fields around the file itself.
MULTIPART_SLACK = 64 * 1024
UPLOAD_PATHS = ("/v1/datasets",)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a body passes its limit: FastAPI re-raises HTTP errors as they are."""

    def __init__(self, message: str) -> None:
        super().__init__(status_code=413, detail=message)


def too_large_message(path: str, upload_mb: int) -> tuple[int, str, str]:
    """(limit in bytes, message, param) for a request to ``path``."""
    if path.rstrip("/") in UPLOAD_PATHS:
        message = f"the upload is larger than this service's limit of {upload_mb} MiB (SPRUCE_MAX_UPLOAD_MB)"
        return upload_mb * MIB + MULTIPART_SLACK, message, "file"
    return MAX_JSON_BODY, f"the request body is larger than {MAX_JSON_BODY // 1024} KiB", "body"


class BodyLimit:
    """Answer 413 for a body over its limit: at once by Content-Length, else as soon as it is read."""

    def __init__(self, app: ASGIApp, upload_mb: int) -> None:
        self.app = app
        self.upload_mb = upload_mb

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, message, param = too_large_message(scope["path"], self.upload_mb)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(413, "payload_too_large", message, param)(scope, receive, send)
            return

        received, exceeded, started = 0, False, False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:  # a chunked body, or one longer than it said
                    exceeded = True
                    raise BodyTooLarge(message)
            return msg

        async def guarded_send(msg: Message) -> None:
            nonlocal started
            if exceeded and not started:
                # Whatever the app made of the cut-off body (a 400, a 413 without the param),
                # the client gets the one clear answer instead.
                if msg["type"] == "http.response.start":
                    started = True
                    await error_response(413, "payload_too_large", message, param)(scope, _empty, send)
                return
            if exceeded:
                return
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if not started:
                await error_response(413, "payload_too_large", message, param)(scope, _empty, send)


async def _empty() -> Message:
    return {"type": "http.disconnect"}


# --- rate limits --------------------------------------------------------------------------------


class RateLimiter(Protocol):
    def hit(self, key: str) -> float:
        """Count one request of ``key``: 0 if allowed, else the seconds until one would be."""
        ...


@dataclass(frozen=True)
class Rate:
    per_minute: int
    burst: int

    @property
    def interval(self) -> float:
        """Seconds between requests at the steady rate."""
        return 60.0 / self.per_minute

    @property
    def tolerance(self) -> float:
        """How far ahead of now a key's theoretical arrival time may run: the burst."""
        return self.interval * (self.burst - 1)


class MemoryLimiter:
    """GCRA in this process: exact for one API process, per process when there are several."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self._tat: dict[str, float] = {}  # key -> theoretical arrival time of its next request
        self._lock = threading.Lock()

    def hit(self, key: str) -> float:
        now = self.clock()
        with self._lock:
            tat = max(self._tat.get(key, now), now)
            allow_at = tat - self.rate.tolerance
            if now < allow_at:
                return allow_at - now
            self._tat[key] = tat + self.rate.interval
            if len(self._tat) > 10_000:  # forget keys whose budget is full again
                self._tat = {k: t for k, t in self._tat.items() if t > now}
            return 0.0


# KEYS[1]: the key's counter; ARGV: interval and tolerance in ms. Redis' own clock, so that API
# hosts with skewed clocks agree. Returns the wait in ms (0: allowed).
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then return math.ceil(allow_at - now) end
local new = tat + interval
redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil(new - now) + 1000)
return 0
"""


class RedisLimiter:
    """GCRA in Redis (one budget per key across API processes), this process's memory as fallback.

    A rate limit must not take the API down with Redis: while Redis does not answer, each process
    limits on its own (MemoryLimiter) and tries Redis again after ``retry_after`` seconds.
    """

    def __init__(self, url: str, rate: Rate, *, retry_after: float = 5.0, timeout: float = 0.5) -> None:
        import redis

        self.rate = rate
        self.fallback = MemoryLimiter(rate)
        self.retry_after = retry_after
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._script = self._redis.register_script(_GCRA_LUA)
        self._down_until = 0.0

    def hit(self, key: str) -> float:
        import redis

        if time.monotonic() >= self._down_until:
            try:
                args = [self.rate.interval * 1000, self.rate.tolerance * 1000]
                wait_ms: Any = self._script(keys=[f"spruce:ratelimit:{key}"], args=args)
                return float(wait_ms) / 1000
            except redis.RedisError as exc:
                log.warning(
                    "rate limits fall back to per-process counting: Redis: %s", exc.__class__.__name__
                )
                self._down_until = time.monotonic() + self.retry_after
        return self.fallback.hit(key)


def retry_after_header(wait: float) -> str:
    return str(max(1, math.ceil(wait)))
