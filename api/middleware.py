"""Per-request context: a request id, one access log line, and the HTTP metrics.

The request id is the client's ``X-Request-ID`` when it is a sane token (so a trace can cross
a proxy), else a new random one; it is set in ``common.logging.request_id`` for every log
record the request writes, and echoed in the response's ``X-Request-ID`` header. The access
line replaces uvicorn's (which runs outside the request and cannot know the id): method, path
(signatures redacted by the log handler), route template, status and duration.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spruce.api.metrics import HttpMetrics
from spruce.common.logging import redact, request_id

HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

access_log = logging.getLogger("spruce.api.access")


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/v1/jobs/{job_id}``), so metrics stay low-cardinality."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"


class RequestContext:
    """Pure ASGI middleware (no response buffering, streaming downloads pass through)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(HEADER.lower().encode(), b"").decode("latin-1")
        rid = given if _SANE_ID.match(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        status = 500  # what the client sees when the app raises before answering
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (HEADER.lower().encode(), rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            self.metrics.observe(scope["method"], route, status, seconds)
            self._log(scope, route, status, seconds)
        # Reset only after a normal return: an exception goes on to the app's 500 handler, whose
        # traceback line must carry the id too (each request runs in a task of its own).
        request_id.reset(token)

    @staticmethod
    def _log(scope: Scope, route: str, status: int, seconds: float) -> None:
        query = scope.get("query_string", b"").decode("latin-1")
        path = scope.get("path", "") + (f"?{query}" if query else "")
        client = scope.get("client")
        fields = {
            "method": scope["method"],
            "path": path,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
            "client": f"{client[0]}:{client[1]}" if client else None,
        }
        # The message carries the path too (the text format shows only the message); both are
        # redacted by common.logging's handler filter.
        access_log.info(
            '%s "%s %s" %d %.1fms',
            fields["client"],
            scope["method"],
            path,
            status,
            fields["duration_ms"],
            extra={"fields": {**fields, "path": redact(path)}},
        )
