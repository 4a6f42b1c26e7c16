"""Field metadata: the one declaration each spec option carries (help, bounds, choices, where it sits).

The spec's dataclasses declare every option once with ``opt``; the job body's parser and
``validate`` (core.spec.schema), the API's request model (api/schemas.py), the CLI's flags
(cli/prune.py) and the dashboard form's defaults (``GET /v1/spec``) are all read from it.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any

from spruce.core.errors import SpecError

KEY = "spruce"


@dataclass(frozen=True)
class Meta:
    """What the schema knows of one option besides its name, type and default.

    ``public`` options sit in the job body's sections (``body``: their dotted place there when it
    is not ``section.name``); every other option is experimental: it is set under the body's
    ``experimental`` object at its own dotted path, and its default is the preset's.
    """

    help: str
    public: bool = False
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is refused (a rate of 0 learns nothing)
    choices: tuple[str, ...] | None = None
    body: str | None = None
    flag: str | None = None  # the CLI flag of a public option (default: --name)


def opt(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with its schema metadata (``Meta``'s keywords); MISSING: required."""
    if default is MISSING:
        return field(metadata={KEY: Meta(help=help, **meta)})
    return field(default=default, metadata={KEY: Meta(help=help, **meta)})


def meta_of(f: Any) -> Meta | None:
    value = f.metadata.get(KEY)
    return value if isinstance(value, Meta) else None


def coerce(value: Any, default: Any, param: str) -> Any:
    """``value`` as the type of ``default`` (JSON's shapes: a number for a float, a list for a tuple)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SpecError("must be true or false", param=param)
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError("must be an integer", param=param)
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError("must be a number", param=param)
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise SpecError("must be a string", param=param)
    elif isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise SpecError("must be a list of strings", param=param)
        value = tuple(value)
    return value


def check(value: Any, meta: Meta, param: str) -> None:
    """The option's own bounds and choices (combinations are ``CompressionSpec.validate``'s)."""
    if meta.choices is not None and value not in meta.choices:
        raise SpecError(f"{value!r} is not one of {', '.join(meta.choices)}", param=param)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = meta.lo, meta.hi
        below = lo is not None and (value <= lo if meta.lo_open else value < lo)
        if below or (hi is not None and value > hi):
            left = "(" if meta.lo_open else "["
            hint = " (-1: the preset's value)" if lo == -1 else ""
            raise SpecError(f"must be in {left}{_num(lo)}, {_num(hi)}]{hint}", param=param)


def _num(x: float | None) -> str:
    return "inf" if x is None else str(int(x)) if float(x).is_integer() else f"{x:g}"
