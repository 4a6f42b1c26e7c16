"""Process logging for the API and the worker: one stderr handler, JSON or text, secrets redacted.

``configure_logging("json")`` gives one JSON object per line with ``time``, ``level``,
``logger``, ``message`` and, where known, ``request_id`` (set by the API's request middleware)
and ``job_id`` (set by the worker around a job); ``"text"`` gives the same fields on one readable
line. Every record that reaches the handler is redacted first: API keys, bearer tokens and the
signature parts of signed URLs (the API's own and S3's presigned ones), so a download link that
works without a key never lands in a log file. Nothing happens at import.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["json", "text"]

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
job_id: ContextVar[str | None] = ContextVar("job_id", default=None)

REDACTED = "[redacted]"
_SECRETS = [
    # API keys (common.keys: "spk_" + 43 url-safe characters), whole or nearly whole.
    (re.compile(r"spk_[A-Za-z0-9_-]{8,}"), "spk_" + REDACTED),
    (re.compile(r"(?i)\b(bearer)\s+[^\s\"',]+"), r"\1 " + REDACTED),
    # Query parameters that make a URL work without a key: the API's signed download links and
    # S3 presigned URLs (v4 and v2 signatures, temporary credentials).
    (
        re.compile(
            r"(?i)([?&](?:signature|x-amz-signature|x-amz-credential|x-amz-security-token"
            r"|awsaccesskeyid)=)[^&\s\"']*"
        ),
        r"\1" + REDACTED,
    ),
]
_HANDLER_MARK = "_spruce_handler"
# Replaced by the API's own access log line (api.middleware), which carries the request id.
_SILENCED = ("uvicorn.access",)
_ROUTED_TO_ROOT = ("uvicorn", "uvicorn.error", "celery", "celery.app.trace", "celery.worker")


def redact(text: str) -> str:
    """``text`` without API keys, bearer tokens or URL signatures."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactFilter(logging.Filter):
    """Formats the record's message once, redacts it, and adds the request and job ids."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.request_id = request_id.get()
        record.job_id = job_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in ("request_id", "job_id"):
            value = getattr(record, field, None)
            if value:
                out[field] = value
        for key, value in getattr(record, "fields", {}).items():  # extra={"fields": {...}}
            out.setdefault(key, value)
        if record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger [request=.. job=..] message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(ids)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = [f"{k}={v}" for k in ("request_id", "job_id") if (v := getattr(record, k, None))]
        record.ids = f" [{' '.join(ids)}]" if ids else ""
        return super().format(record)


def _console(handler: logging.Handler) -> bool:
    """A plain handler writing to the process's stderr or stdout (``logging.basicConfig``'s)."""
    stream = getattr(handler, "stream", None)
    return type(handler) is logging.StreamHandler and stream in (sys.stderr, sys.stdout)


def configure_logging(fmt: LogFormat = "text", level: int = logging.INFO) -> logging.Handler:
    """Send every logger's records through one redacting stderr handler in ``fmt``; idempotent.

    Console handlers already on the root logger (``logging.basicConfig``'s, the one this
    function installed before) are replaced; any other (a log file, a test runner's capture)
    is kept and redacts too.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in root.handlers[:]:
        if getattr(old, _HANDLER_MARK, False) or _console(old):
            root.removeHandler(old)  # replaced: a second console line would be unredacted
        elif not any(isinstance(f, RedactFilter) for f in old.filters):
            old.addFilter(RedactFilter())  # a file or a test runner's capture: redacted too
    root.addHandler(handler)
    root.setLevel(level)
    for name in _ROUTED_TO_ROOT:  # their own handlers would print unredacted lines
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for name in _SILENCED:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = False
    return handler
