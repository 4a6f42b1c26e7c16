"""``GET /v1/spec``: the job body's schema as data (options, defaults, bounds, presets).

The dashboard's form takes its defaults and choices from here, so they come from the engine's
one declaration (``core.spec``) rather than from literals in the page.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fastapi import APIRouter

from spruce.core.spec import CompressionSpec
from spruce.core.spec.schema import describe

router = APIRouter(tags=["jobs"])


@cache
def _document() -> dict[str, Any]:
    return describe(CompressionSpec)


@router.get("/v1/spec", name="read_spec")
def spec_schema() -> dict[str, Any]:
    """Every public option of a job (``param``, ``default``, ``choices``, ``min``/``max``, ``help``),
    every experimental one with its value under each preset, and the presets' tables. Needs no
    key: it describes the service, not a team's data."""
    return _document()
