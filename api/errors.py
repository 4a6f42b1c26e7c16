"""Every error leaves the API as ``{"error": {"code", "message", "param"}}`` with its HTTP status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import SpecError

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
    503: "service_unavailable",
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
        return error_response(exc.status, exc.code, exc.message, exc.param, exc.headers, exc.extra)

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
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error")
