"""The FastAPI application: ``create_app()`` builds one; ``uvicorn spruce.api.app:create_app --factory`` serves it.

Importing this module builds nothing: ``api.app.app`` is created on first access (for servers
that want a module attribute), and settings, engines and the broker connection are made lazily.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute

from spruce.api import datasets, errors, health, idempotency, jobs, metrics, spec, sweeps, usage
from spruce.api.deps import ServiceContext
from spruce.api.limits import BodyLimit
from spruce.api.middleware import HEADER as REQUEST_ID
from spruce.api.middleware import RequestContext
from spruce.api.schemas import JobCreate
from spruce.common.logging import configure_logging
from spruce.common.settings import Settings, get_settings

log = logging.getLogger(__name__)

DESCRIPTION = """Spruce turns a dense causal language model into a sparse one.

Submit a job (`POST /v1/jobs`), follow it (`GET /v1/jobs/{id}`, `/events`), download the sparse
checkpoint (`/artifacts`). Every `/v1` request carries `Authorization: Bearer <API key>`.
Errors are `{"error": {"code", "message", "param"}}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app bound to ``settings`` (default: the environment's ``SPRUCE_*`` settings)."""
    app = FastAPI(
        title="Spruce",
        version="0.1.0",
        description=DESCRIPTION,
        docs_url="/docs",
        generate_unique_id_function=operation_id,
        lifespan=_freeze_startup_objects,
    )
    ctx = app.state.ctx = ServiceContext(settings or get_settings())
    configure_logging(ctx.settings.log_format)
    registry, app.state.http_metrics, app.state.metrics_service = metrics.build_registry(
        ctx.database_url, lambda: ctx.celery, ctx.settings.resolved_broker_url
    )
    app.state.metrics_registry = registry
    errors.install(app, body_models={"/v1/jobs": JobCreate, "/v1/sweeps": sweeps.SweepCreate})
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(jobs.router)
    app.include_router(jobs.downloads)
    app.include_router(datasets.router)
    app.include_router(spec.router)
    app.include_router(sweeps.router)
    app.include_router(usage.router)
    _include_dashboard(app)
    _add_middleware(app, app.state.ctx.settings)
    return app


@asynccontextmanager
async def _freeze_startup_objects(app: FastAPI) -> AsyncIterator[None]:
    """Move what startup built (routes, schemas, modules: ~100k objects that live as long as the
    process) out of the garbage collector's way. Every full collection walked them all, a
    0.2-0.4 s pause of every request every few seconds under load (docs/service.md, "Latency").
    Shutdown hands them back, for a process that goes on without the app (a test).

    The broker's client is built first (Celery's import and configuration, no connection): built
    by the first request instead, it made a cold process's first ``/readyz`` miss its second."""
    try:
        app.state.ctx.celery  # noqa: B018 (a cached property: built here, once)
    except Exception as exc:  # a broken broker must not keep the API down: requests answer 503
        log.warning("the broker's client is not ready at startup (%s); requests retry it", type(exc).__name__)
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def operation_id(route: APIRoute) -> str:
    """The OpenAPI operationId of ``route``: its name (the function's, or ``name=``), e.g.
    ``create_job``. Generated clients name their methods after it, so it must not follow the
    path or the method (FastAPI's default, ``create_job_v1_jobs_post``)."""
    return route.name


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(BodyLimit, upload_mb=settings.max_upload_mb)
    # Added last, so outermost: even a 413 or 429 carries the CORS headers a browser needs to
    # read it. Without SPRUCE_CORS_ORIGINS no CORS header is ever sent: other origins' pages
    # cannot read any answer (the dashboard is same-origin and needs none).
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", idempotency.HEADER, REQUEST_ID],
            expose_headers=[
                "Retry-After",
                idempotency.REPLAYED,
                "X-Checksum-Sha256",
                "Content-Disposition",
                REQUEST_ID,
            ],
            allow_credentials=False,  # bearer keys, never cookies
            max_age=600,
        )
    # Outermost of all: the request id is set before anything logs, and the latency measured
    # is what the client sees (413s, 429s and CORS answers included).
    app.add_middleware(RequestContext, metrics=app.state.http_metrics)


def _include_dashboard(app: FastAPI) -> None:
    try:
        from spruce.api import dashboard
    except ModuleNotFoundError as exc:  # an API-only build without the dashboard
        if exc.name != "spruce.api.dashboard":
            raise
        log.info("no dashboard module; serving the API only")
        return
    app.include_router(dashboard.router)


def __getattr__(name: str) -> Any:
    # `api.app:app` for servers that need an attribute: built on first access, not at import.
    if name == "app":
        value = create_app()
        globals()["app"] = value
        return value
    raise AttributeError(name)
