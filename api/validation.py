"""Service rules on top of the engine's spec: what this deployment lets a team ask for.

The engine decides what a spec means (``core.spec``); these checks decide what the service
allows: bounded sizes, models from the hub / S3 / allowed folders only (never an arbitrary path
on the worker), and text sources that are built in or uploaded by the same team.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

from spruce.common.refs import (
    BUILTIN_SOURCES,
    DATASET_ID,
    EVALUATION_ONLY,
    HUB_DATASET,
    MODEL_ALIASES,
    check_model_ref,
)
from spruce.common.settings import Settings
from spruce.core.errors import SpecError
from spruce.core.spec import CompressionSpec

__all__ = [
    "MAX_JSON_DEPTH",
    "MODEL_ALIASES",
    "check_limits",
    "check_model_ref",
    "check_sources",
    "json_depth",
    "local_models",
]

# Uploaded .jsonl records hold text fields: nesting deeper than this is refused before parsing
# (json.loads recurses once per level and fails with RecursionError, a 500, near 1000).
MAX_JSON_DEPTH = 100
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")
# An lm-eval task, group or tag name, or a pattern of them (arc_*): never a path, because a task
# YAML is read (and its !function hooks imported) from the worker's disk (docs/evaluation.md).
_TASK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-*?]{0,199}")


def check_limits(spec: CompressionSpec, settings: Settings) -> None:
    """Bounds of this deployment (the engine's own bounds are far wider)."""
    checks = (
        (spec.calibration.samples, settings.max_samples, "calibration.samples"),
        (spec.calibration.seq_len, settings.max_seq_len, "calibration.seq_len"),
        (spec.evaluation.seq_len, settings.max_seq_len, "experimental.evaluation.seq_len"),
        (spec.evaluation.max_windows, settings.max_eval_windows, "experimental.evaluation.max_windows"),
    )
    for value, limit, param in checks:
        if value > limit:
            raise SpecError(f"{value} is above this service's limit of {limit}", param=param)


def dataset_ids(spec: CompressionSpec) -> list[tuple[str, str]]:
    """(param, source) for every text source of the spec."""
    out = [("calibration.source", spec.calibration.source)]
    out += [(f"evaluation.sources[{i}]", s) for i, s in enumerate(spec.evaluation.sources)]
    return out


def check_sources(spec: CompressionSpec, owns_dataset: Callable[[str], bool]) -> None:
    """Every source is built in, or an uploaded dataset id that ``owns_dataset`` accepts; lm-eval
    tasks are named, not given as paths."""
    for i, task in enumerate(spec.evaluation.tasks):
        if not _TASK_NAME.fullmatch(task) or ".." in task or task.endswith((".yaml", ".yml")):
            raise SpecError(
                f"{task!r} is not an lm-eval task name: the service runs tasks by name (hellaswag, arc_*); "
                "a task YAML path works in a local run (spruce prune)",
                param=f"experimental.evaluation.tasks[{i}]",
            )
    for param, source in dataset_ids(spec):
        if source in EVALUATION_ONLY and param.startswith("calibration"):
            raise SpecError(
                f"{source!r} is an evaluation text only: calibrate on pydoc or a dataset", param=param
            )
        if source in BUILTIN_SOURCES or (param.startswith("evaluation") and source == "none"):
            continue
        if HUB_DATASET.match(source) and ".." not in source:
            continue
        if DATASET_ID.match(source):
            if not owns_dataset(source):
                raise SpecError(
                    f"no dataset {source!r} in your team (upload it with POST /v1/datasets)", param=param
                )
            continue
        raise SpecError(
            f"{source!r} is not a text source: use {', '.join(BUILTIN_SOURCES)}, a hub dataset "
            "'owner/name[?split=...]', or an uploaded dataset id 'ds_...'",
            param=param,
        )


def local_models(roots: Iterable[Path]) -> list[str]:
    """Model folders (holding a config.json) directly under the allowed roots."""
    found: list[str] = []
    for root in roots:
        if root.is_dir():
            found.extend(str(p.parent) for p in sorted(root.glob("*/config.json")))
    return found


def json_depth(text: str) -> int:
    """How deeply the JSON text ``text`` nests arrays and objects (brackets inside strings do not count).

    Linear in the text and without recursion, so it is safe on input that ``json.loads`` is not.
    """
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest
