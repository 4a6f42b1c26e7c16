"""The worker's logging: Celery hands it to ``common.logging`` (JSON or text, redacted), and every
record written while a task runs carries the job id.

Connected by ``worker.app`` (Celery signals): ``setup_logging`` replaces Celery's own logging
set-up, so the worker's lines have the API's shape. The message's job id is set for the whole
task; ``worker.runner.run`` sets the id of the job it actually claimed (the fair scheduler may
pick another one).
"""

from __future__ import annotations

from contextvars import Token
from typing import Any

from celery.signals import setup_logging, task_postrun, task_prerun

from spruce.common.logging import configure_logging, job_id
from spruce.common.settings import get_settings

_tokens: dict[str, Token[str | None]] = {}  # task id -> the context to restore after it


@setup_logging.connect
def _configure(loglevel: Any = None, **_: Any) -> None:
    import logging

    level = loglevel if isinstance(loglevel, int) else logging.getLevelName(str(loglevel or "INFO").upper())
    configure_logging(get_settings().log_format, level if isinstance(level, int) else logging.INFO)


@task_prerun.connect
def _job_context(task_id: str | None = None, args: Any = None, **_: Any) -> None:
    if task_id and args:
        _tokens[task_id] = job_id.set(str(args[0]))


@task_postrun.connect
def _job_context_end(task_id: str | None = None, **_: Any) -> None:
    token = _tokens.pop(task_id or "", None)
    if token is not None:
        try:
            job_id.reset(token)
        except ValueError:  # ended in another context than it started in
            job_id.set(None)
