"""Every error leaves the API as ``{"error": {"code", "message", "param"}}`` with its HTTP status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from spruce.common.queue import BrokerUnavailable
from spruce.common.storage import StorageUnavailable
from spruce.core.errors import SpecError

log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "service_unavailable",
}

# FastAPI's 400 detail when reading the body fails before validation (fastapi.routing).
FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"

# A dependency that is down: clients retry after this many seconds (the Retry-After header).
RETRY_AFTER_DOWN = "5"

# Every authenticated route may answer these (OpenAPI `responses` of the /v1 routers).
COMMON: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    429: {"description": "this key's request budget is spent; see Retry-After"},
    503: {"description": "the database, broker or object storage is down; the body names which"},
}


class ApiError(Exception):
    """Raise from a route to answer ``status`` with the error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param
        self.headers = headers
        self.extra = extra or {}


def error_response(
    status: int,
    code: str,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": {"code": code, "message": message, "param": param}, **(extra or {})}
    return JSONResponse(status_code=status, content=body, headers=headers)


def unavailable(code: str, message: str, extra: dict[str, Any] | None = None) -> ApiError:
    """503 for a dependency that is down (``code`` names which), with Retry-After."""
    return ApiError(503, code, message, headers={"Retry-After": RETRY_AFTER_DOWN}, extra=extra)


def not_found(what: str = "job") -> ApiError:
    # The same answer for "does not exist" and "belongs to another team": ids do not leak.
    return ApiError(404, f"{what}_not_found", f"no such {what}")


def spec_error(exc: SpecError) -> ApiError:
    return ApiError(422, exc.code, f"{exc.param}: {exc.message}" if exc.param else exc.message, exc.param)


def body_param(loc: tuple[Any, ...], model: type[BaseModel] | None) -> str | None:
    """The dotted field path of a pydantic error location inside the body.

    Pydantic puts union-member tags into locations (``sparsity.float``); walking the model's own
    fields keeps only real field names and list indexes, which is what a client can act on.
    """
    if model is None:
        return ".".join(str(p) for p in loc) or None
    parts: list[str] = []
    current: type[BaseModel] | None = model
    for item in loc:
        if isinstance(item, int) and parts:
            parts[-1] = f"{parts[-1]}[{item}]"
        elif current is not None and isinstance(item, str):
            # a field of the current model, or an unknown key that extra="forbid" refused
            field = current.model_fields.get(item)
            parts.append(item)
            current = _model_of(field.annotation) if field is not None else None
        # anything else is a union-member tag under a leaf field: not part of the path
    return ".".join(parts) or None


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _validation_message(err: dict[str, Any]) -> str:
    if err.get("type") == "extra_forbidden":
        return "unknown field"
    if err.get("type") == "missing":
        return "is required"
    return str(err.get("msg", "is invalid"))


def install(app: FastAPI, body_models: dict[str, type[BaseModel]]) -> None:
    """Register the handlers; ``body_models`` maps a route path to its body model (for params)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _as_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        err: dict[str, Any] = dict(errors[0]) if errors else {"loc": (), "msg": "invalid request"}
        loc = tuple(err.get("loc", ()))
        where, rest = (loc[0], loc[1:]) if loc else ("body", ())
        if err.get("type") == "json_invalid":
            ctx: dict[str, Any] = err.get("ctx") or {}
            detail = ctx.get("error", "")
            return error_response(422, "invalid_json", f"the body is not valid JSON: {detail}".rstrip(": "))
        if where == "body":
            route = request.scope.get("route")
            model = body_models.get(getattr(route, "path", ""))
            param = body_param(rest, model)
        else:
            param = ".".join(str(p) for p in rest) or None
        message = _validation_message(err)
        text = f"{param}: {message}" if param else message
        return error_response(422, "invalid_request", text, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == FASTAPI_BODY_PARSE_ERROR:
            # Bytes that are not UTF-8 where JSON was declared, a broken multipart form: as with
            # any other body that does not parse, a 422 (documented on every route with a body).
            return error_response(
                422, "invalid_body", "the body could not be parsed (not UTF-8 JSON, or a broken form)"
            )
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, None, getattr(exc, "headers", None))

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        # Connection refused, a server that went away, a pool that cannot reconnect: the request
        # wrote nothing (its transaction died with the connection), so it is safe to retry.
        if not (isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated):
            return await _unexpected(request, exc)
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, _first_line(exc))
        return _as_response(
            unavailable(
                "database_unavailable", "the database is unreachable; nothing was changed, retry later"
            )
        )

    @app.exception_handler(StorageUnavailable)
    async def _storage(request: Request, exc: StorageUnavailable) -> JSONResponse:
        log.warning("storage unavailable on %s %s: %s", request.method, request.url.path, _first_line(exc))
        return _as_response(
            unavailable(
                "storage_unavailable", "object storage is unreachable; nothing was recorded, retry later"
            )
        )

    @app.exception_handler(BrokerUnavailable)
    async def _broker(request: Request, exc: BrokerUnavailable) -> JSONResponse:
        # POST /v1/jobs answers this itself (it marks the row); any other route that sends lands here.
        log.warning("broker unavailable on %s %s: %s", request.method, request.url.path, _first_line(exc))
        return _as_response(
            unavailable("broker_unavailable", "the job queue is unreachable; nothing was sent, retry later")
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error")


def _as_response(exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.param, exc.headers, exc.extra)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:200] if text else ''}"
