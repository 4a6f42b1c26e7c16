"""Typed errors of the engine.

Two families, because the service treats them differently: a ``UserError`` is bad input
(retrying cannot help, the job fails at once with the message), a ``SystemFault`` is the
machine or the code failing (the worker may retry a bounded number of times).
"""

from __future__ import annotations


class SpruceError(Exception):
    """Base of every error the engine raises on purpose."""

    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class UserError(SpruceError):
    """The request cannot succeed as given: fix the input, do not retry."""

    code = "invalid_request"


class SpecError(UserError):
    """A field of the compression spec is invalid; ``param`` names it (dotted path)."""

    code = "invalid_spec"


class ModelNotFound(UserError):
    code = "model_not_found"


class UnsupportedArchitecture(UserError):
    code = "unsupported_architecture"


class DatasetUnavailable(UserError):
    code = "dataset_unavailable"


class SystemFault(SpruceError):
    """Something failed that a retry on a healthy machine may fix."""

    code = "system_error"


class FactorizationError(SystemFault):
    """SparseGPT's Cholesky factorisation failed even after raising the dampening."""

    code = "factorization_failed"


class Cancelled(SpruceError):
    """``should_stop`` returned True: the run ended between two layers on request."""

    code = "cancelled"
