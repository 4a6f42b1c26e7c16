"""lm-evaluation-harness tasks on the in-memory model (``evaluation.tasks``), through its Python API.

lm-eval is optional (the ``eval`` extra: ``pip install 'spruce[eval]'``). It is imported inside
these functions only, when a job names tasks, so importing core never imports it; a job naming
tasks where it is not installed fails before the model is loaded, with a ``SpecError``.

A task is an lm-eval task, group or tag name (``hellaswag``, ``arc_easy``, ``mmlu``: lm-eval's own
YAMLs, whose datasets come from the Hugging Face hub or a datasets cache that holds them), or a
local path: a task YAML file (``*.yaml``) or a folder of them, whose datasets may be local files
(``dataset_path: json`` with ``dataset_kwargs: {data_files: ...}``) and so run offline. The model is
wrapped as ``HFLM(pretrained=<the model object>)``: nothing is written to disk or loaded again.
docs/evaluation.md says how to set it and what the report holds.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spruce.core.errors import Cancelled, DatasetUnavailable, SpecError

PARAM = "experimental.evaluation.tasks"  # its place in the job body (core.spec)
# lm-eval's default is 100,000 resamples; a mean's stderr is closed-form whatever this is, and the
# few bootstrapped metrics (median, F1, BLEU...) are estimated well enough with 1,000.
BOOTSTRAP_ITERS = 1000
SEED = 1234  # lm-eval's default seeds (numpy, torch, few-shot sampling), fixed so runs repeat
_INSTALL = "pip install 'spruce[eval]' (lm-eval) on the machine that runs the job"


@dataclass(frozen=True)
class Tasks:
    """The tasks a job runs, checked: names lm-eval knows and the task manager that knows them."""

    names: tuple[str, ...]  # lm-eval task, group or tag names, in the order asked for
    manager: Any = field(repr=False)  # lm_eval.tasks.TaskManager, indexing the local folders too


@dataclass
class TaskResults:
    """One model's figures: per task (and group), metric -> value, stderr as ``<metric>_stderr``."""

    metrics: dict[str, dict[str, float | None]]
    samples: dict[str, int]  # examples evaluated per task
    shots: dict[str, int]  # few-shot examples per task


def installed() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def resolve(entries: Sequence[str]) -> Tasks:
    """Check ``entries`` (names, YAML files, folders) and load each task once, before any pruning.

    Loading builds the tasks' datasets, so a missing file or an unreachable hub dataset fails now
    (``DatasetUnavailable``) rather than after hours of pruning. An unknown name or a path that
    defines no task is a ``SpecError``; so is lm-eval not being installed.
    """
    if not installed():
        raise SpecError(f"lm-evaluation-harness tasks need lm-eval: {_INSTALL}", param=PARAM)
    from lm_eval.tasks import TaskManager

    folders: list[Path] = []
    for i, entry in enumerate(entries):
        if _is_path(entry):
            folders.append(_folder_of(Path(entry).expanduser().resolve(), f"{PARAM}[{i}]"))
    named = [e for e in entries if not _is_path(e)]
    # lm-eval's own index (thousands of YAMLs, tens of seconds) only where a name needs it
    manager = TaskManager(include_path=[str(f) for f in folders] or None, include_defaults=bool(named))
    names: list[str] = []
    for i, entry in enumerate(entries):
        found = (
            _names_in(manager, Path(entry).expanduser().resolve())
            if _is_path(entry)
            else _named(manager, entry)
        )
        if not found:
            what = "defines no lm-eval task" if _is_path(entry) else "is not an lm-eval task, group or tag"
            raise SpecError(f"{entry!r} {what}", param=f"{PARAM}[{i}]")
        names += [n for n in found if n not in names]
    tasks = Tasks(names=tuple(names), manager=manager)
    _load(tasks)
    return tasks


def run(
    model: nn.Module,
    tokenizer: Any,
    tasks: Tasks,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    limit: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_task: Callable[[int, int], None] | None = None,
) -> TaskResults:
    """Run ``tasks`` on ``model`` as it is in memory (one lm-eval call per task, cancellable between).

    The whole model sits on ``device`` while the tasks run (lm-eval runs the model's own forward)
    and goes back where it was after. The tokenizer is copied: lm-eval may give it a pad token,
    which must not reach the exported one. ``limit``: at most this many examples per task.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    home = next(model.parameters()).device
    model.to(device)
    out = TaskResults(metrics={}, samples={}, shots={})
    try:
        lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size)
        for k, name in enumerate(tasks.names):
            if should_stop is not None and should_stop():
                raise Cancelled(f"cancelled before lm-eval task {name!r}")
            raw = simple_evaluate(
                model=lm,
                tasks=[name],
                task_manager=tasks.manager,
                limit=limit,
                bootstrap_iters=BOOTSTRAP_ITERS,
                log_samples=False,
                random_seed=0,
                numpy_random_seed=SEED,
                torch_random_seed=SEED,
                fewshot_random_seed=SEED,
            )
            assert raw is not None  # None only on the non-zero ranks of a distributed run
            _merge(out, raw)
            if on_task is not None:
                on_task(k + 1, len(tasks.names))
    finally:
        model.to(home)
    return out


def report(dense: TaskResults | None, sparse: TaskResults | None, *, limit: int | None) -> dict[str, Any]:
    """``report["tasks"]``: per model, task -> metric -> value; what was run and with which lm-eval."""
    from importlib import metadata

    either = sparse or dense
    return {
        "dense": dense.metrics if dense else None,
        "sparse": sparse.metrics if sparse else None,
        "samples": either.samples if either else {},
        "num_fewshot": either.shots if either else {},
        "limit": limit,
        "lm_eval": metadata.version("lm-eval"),
    }


def shape(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """lm-eval's ``results`` as metric -> value per task: ``"acc,none"`` becomes ``acc``, a filtered
    metric keeps its filter (``"exact_match,strict-match"``), a stderr it could not compute is None,
    and the labels (``alias``, ``name``, ``sample_len``) are left out."""
    shaped: dict[str, dict[str, float | None]] = {}
    for task, row in results.items():
        metrics: dict[str, float | None] = {}
        for key, value in row.items():
            if "," not in key:
                continue  # alias, name, sample_len: labels rather than figures
            metric, filt = key.split(",", 1)
            name = metric if filt == "none" else key
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                if metric.endswith("_stderr"):
                    metrics[name] = None  # "N/A": no stderr for this aggregation
                continue
            metrics[name] = float(value)
        shaped[task] = metrics
    return shaped


def _merge(out: TaskResults, raw: dict[str, Any]) -> None:
    out.metrics.update(shape(raw["results"]))
    for task, n in (raw.get("n-samples") or {}).items():
        out.samples[task] = int(n.get("effective", n.get("original", 0)))
    out.shots.update({t: int(s) for t, s in (raw.get("n-shot") or {}).items()})


def _load(tasks: Tasks) -> None:
    """Build every task once (lm-eval loads its dataset then): a dataset that cannot be read is a
    ``DatasetUnavailable`` (datasets' not-found and hub errors are OSErrors), a task lm-eval cannot
    build from its YAML a ``SpecError``."""
    for name in tasks.names:
        try:
            tasks.manager.load([name])
        except OSError as err:
            raise DatasetUnavailable(f"lm-eval task {name!r}: its dataset could not be read: {err}",
                                     param=PARAM) from err  # fmt: skip
        except Exception as err:  # whatever lm-eval raises for a task it cannot build
            raise SpecError(f"lm-eval task {name!r} could not be built: {type(err).__name__}: {err}",
                            param=PARAM) from err  # fmt: skip


def _is_path(entry: str) -> bool:
    return entry.endswith((".yaml", ".yml")) or "/" in entry or entry.startswith(("~", "."))


def _folder_of(path: Path, param: str) -> Path:
    if path.is_dir():
        return path
    if path.is_file() and path.suffix == ".yaml":
        return path.parent
    if path.is_file():
        raise SpecError(f"{str(path)!r}: lm-eval reads task files named *.yaml", param=param)
    raise DatasetUnavailable(f"no task file or folder at {str(path)!r}", param=param)


def _names_in(manager: Any, path: Path) -> list[str]:
    """The tasks a YAML file or folder defines; in a folder that defines groups, the groups (which
    run their tasks) rather than each task again."""

    def inside(p: Path | None) -> bool:
        return p is not None and (p.resolve() == path if path.is_file() else p.resolve().is_relative_to(path))

    found = {name for name, e in manager.task_index.items() if inside(e.yaml_path)}
    groups = sorted(found & set(manager.all_groups))
    return groups or sorted(found & set(manager.all_subtasks))


def _named(manager: Any, name: str) -> list[str]:
    """``name`` if lm-eval knows it; a pattern (``arc_*``) gives every name it matches."""
    if name in manager.task_index:
        return [name]
    return list(manager.match_tasks([name])) if any(c in name for c in "*?[") else []
