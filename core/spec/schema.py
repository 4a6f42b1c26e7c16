"""The job body <-> the spec, read from the fields' metadata (core.spec.fields).

The body's public sections hold the public options; ``experimental`` holds the rest at their
dotted paths (``{"swap_rounds": 0, "induction": {"epochs": 2}}``), over the preset's values.
Errors are ``SpecError`` whose ``param`` is the dotted place in the body.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from spruce.core.errors import SpecError
from spruce.core.spec.fields import Meta, check, coerce, meta_of
from spruce.core.spec.presets import PRESETS
from spruce.core.spec.sparsity import Sparsity

SECTIONS = ("method", "calibration", "evaluation", "options")
TOP = ("model", "sparsity", *SECTIONS, "experimental")
# Where the nested sections' options sat in the body before they moved under ``experimental``.
_OLD_SECTION = {"induction": "method.induction", "calibration": "calibration", "evaluation": "evaluation"}
_OLD_OPTIONS = ("compute_dtype", "batch_size")


@dataclass(frozen=True)
class Leaf:
    """One option: its dotted path in the spec, its metadata and its declared default."""

    path: str
    meta: Meta
    default: Any

    @property
    def param(self) -> str:
        """Its place in the job body."""
        if self.meta.public:
            return self.meta.body or self.path
        return f"experimental.{self.path}"

    @property
    def old(self) -> str:
        """Where an experimental option sat in the body before the ``experimental`` object."""
        head, _, rest = self.path.partition(".")
        if rest:
            return f"{_OLD_SECTION[head]}.{rest}"
        return f"options.{head}" if head in _OLD_OPTIONS else f"method.{head}"


@functools.cache
def leaves(cls: type) -> tuple[Leaf, ...]:
    """Every option of the spec class ``cls`` (sections flattened), in declaration order."""
    out: list[Leaf] = []
    for f in dataclasses.fields(cls):
        meta = meta_of(f)
        if meta is not None:
            out.append(Leaf(f.name, meta, f.default))
            continue
        section: Any = f.default_factory
        for g in dataclasses.fields(section):
            sub = meta_of(g)
            assert sub is not None, f"{f.name}.{g.name} has no schema metadata"
            out.append(Leaf(f"{f.name}.{g.name}", sub, g.default))
    return tuple(out)


def preset_values(cls: type, preset: str) -> dict[str, Any]:
    """Every experimental option's value under ``preset``, by path."""
    table = PRESETS[preset]
    return {leaf.path: table.get(leaf.path, leaf.default) for leaf in leaves(cls) if not leaf.meta.public}


def moved(cls: type) -> dict[str, str]:
    """Old body place -> new one, for every option now under ``experimental``."""
    return {leaf.old: leaf.param for leaf in leaves(cls) if not leaf.meta.public}


def moved_message(new: str) -> str:
    return f"moved to {new} (experimental settings are unstable; docs/spec.md)"


def parse(cls: type, body: Any) -> dict[str, Any]:
    """The spec's constructor values (by dotted path) that the job ``body`` describes."""
    if not isinstance(body, dict):
        raise SpecError("the job body must be an object")
    by_param = {leaf.param: leaf for leaf in leaves(cls) if leaf.meta.public}
    old = moved(cls)
    given: dict[str, Any] = {}
    for key, value in body.items():
        if key in ("model", "sparsity"):
            given[key] = value
        elif key in SECTIONS:
            for name, item in _object(value, key).items():
                param = f"{key}.{name}"
                if param in by_param:
                    given[by_param[param].path] = _public(param, item)
                elif param in old:
                    raise SpecError(moved_message(old[param]), param=param)
                else:
                    allowed = sorted(p.split(".", 1)[1] for p in by_param if p.startswith(key + "."))
                    raise SpecError(f"unknown field; allowed: {', '.join(allowed)}", param=param)
        elif key != "experimental":
            raise SpecError(f"unknown field; allowed: {', '.join(TOP)}", param=key)
    for required in ("model", "sparsity"):
        if required not in given:
            raise SpecError("is required", param=required)
    preset = given.get("preset", "default")
    if preset not in PRESETS:
        raise SpecError(f"{preset!r} is not one of {', '.join(PRESETS)}", param="method.preset")
    values = {**preset_values(cls, preset), **_experimental(cls, body.get("experimental"))}
    for leaf in leaves(cls):
        if leaf.path in given:
            values[leaf.path] = given[leaf.path]
    return {leaf.path: _value(leaf, values[leaf.path]) for leaf in leaves(cls) if leaf.path in values}


def _public(param: str, value: Any) -> Any:
    if param == "method.induction" and isinstance(value, dict):
        raise SpecError(induction_moved_message(value), param=param)
    return value


def induction_moved_message(settings: dict[str, Any]) -> str:
    """For the old ``method.induction`` object: the switch is a bool now, the settings moved."""
    where = ", ".join(f"experimental.induction.{k}" for k in settings if k != "enabled")
    return "must be true or false (enabled); " + moved_message(where or "experimental.induction")


def _experimental(cls: type, value: Any) -> dict[str, Any]:
    """The ``experimental`` object as {dotted path: value}; None leaves the preset's value."""
    by_path = {leaf.path: leaf for leaf in leaves(cls)}
    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for name, item in _object(obj, f"experimental{prefix}").items():
            path = f"{prefix}.{name}".lstrip(".")
            leaf = by_path.get(path)
            if leaf is None and isinstance(item, dict) and path in _OLD_SECTION:
                walk(item, f".{path}")
            elif leaf is not None and leaf.meta.public:
                raise SpecError(f"is a public option: set it at {leaf.param}", param=f"experimental.{path}")
            elif leaf is None:
                raise SpecError("unknown experimental setting", param=f"experimental.{path}")
            elif item is not None:
                out[path] = item

    walk(value, "")
    return out


def _object(value: Any, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError("must be an object", param=param)
    return value


def _value(leaf: Leaf, value: Any) -> Any:
    param = leaf.param
    if leaf.path == "sparsity":
        return value if isinstance(value, Sparsity) else Sparsity.parse(value, param=param)
    if leaf.path == "model":
        if not isinstance(value, str) or not value.strip():
            raise SpecError("must be a non-empty string naming the model", param=param)
        return value.strip()
    value = coerce(value, leaf.default, param)
    check(value, leaf.meta, param)
    return value


def check_fields(spec: Any) -> None:
    """Every option's own bounds and choices, for a spec however it was built."""
    cls: Any = type(spec)
    for leaf in leaves(cls):
        if leaf.path not in ("model", "sparsity"):
            check(get(spec, leaf.path), leaf.meta, leaf.param)


def get(spec: Any, path: str) -> Any:
    return functools.reduce(getattr, path.split("."), spec)


def to_body(spec: Any) -> dict[str, Any]:
    """The job body of ``spec``: public options in their sections, and under ``experimental``
    the options whose value differs from the preset's."""
    body: dict[str, Any] = {
        "model": spec.model,
        "sparsity": None,
        "method": {},
        "calibration": {},
        "evaluation": {},
        "options": {},
        "experimental": {},
    }
    cls: Any = type(spec)
    base = preset_values(cls, spec.preset)
    for leaf in leaves(cls):
        value = _json(get(spec, leaf.path))
        if leaf.meta.public:
            _put(body, leaf.param, value)
        elif value != _json(base[leaf.path]):
            _put(body["experimental"], leaf.path, value)
    return body


def _json(value: Any) -> Any:
    if isinstance(value, Sparsity):
        return value.to_json()
    return list(value) if isinstance(value, tuple) else value


def _put(target: dict[str, Any], path: str, value: Any) -> None:
    *heads, last = path.split(".")
    for head in heads:
        target = target.setdefault(head, {})
    target[last] = value


def describe(cls: type) -> dict[str, Any]:
    """The schema as data (``GET /v1/spec``, the dashboard's defaults, the CLI's --help): every
    public option with its default, every experimental one with its value under each preset."""

    def entry(leaf: Leaf) -> dict[str, Any]:
        m = leaf.meta
        out: dict[str, Any] = {"param": leaf.param, "help": m.help, "type": _type_name(leaf)}
        out.update(
            {k: _json(v) for k, v in (("choices", m.choices), ("min", m.lo), ("max", m.hi)) if v is not None}
        )
        if m.lo_open:
            out["exclusive_min"] = True
        return out

    public = [
        {**entry(leaf), **({} if leaf.default is dataclasses.MISSING else {"default": _json(leaf.default)})}
        for leaf in leaves(cls)
        if leaf.meta.public
    ]
    values = {name: preset_values(cls, name) for name in PRESETS}
    experimental = [
        {**entry(leaf), "presets": {name: _json(values[name][leaf.path]) for name in PRESETS}}
        for leaf in leaves(cls)
        if not leaf.meta.public
    ]
    return {
        "public": public,
        "experimental": experimental,
        "presets": {k: dict(v) for k, v in PRESETS.items()},
    }


def _type_name(leaf: Leaf) -> str:
    if leaf.path == "sparsity":
        return "number|string"
    d = leaf.default
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (tuple, "array")):
        if isinstance(d, kind):
            return name
    return "string"
