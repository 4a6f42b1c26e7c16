"""Request dependencies: the service context, a DB session, and the caller (from the API key)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from api.errors import ApiError
from common.db import session_factory
from common.keys import authenticate
from common.models import utcnow
from common.queue import make_celery
from common.settings import Settings
from common.storage import Storage, build_storage

LAST_USED_RESOLUTION = timedelta(minutes=1)  # write last_used_at at most this often per key


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


@dataclass(frozen=True)
class Caller:
    key_id: str
    key_name: str
    key_prefix: str
    team_id: str
    team_name: str


def get_ctx(request: Request) -> ServiceContext:
    ctx: ServiceContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[ServiceContext, Depends(get_ctx)]


def get_session(ctx: CtxDep) -> Iterator[Session]:
    session = session_factory(ctx.database_url)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "invalid_api_key", message, headers={"WWW-Authenticate": "Bearer"})


def get_caller(
    session: SessionDep,
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
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        key.last_used_at = now
        session.commit()
    return Caller(
        key_id=key.id, key_name=key.name, key_prefix=key.prefix, team_id=key.team_id, team_name=key.team.name
    )


CallerDep = Annotated[Caller, Depends(get_caller)]
