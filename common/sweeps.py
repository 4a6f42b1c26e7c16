"""Sweeps: one job body run at several targets (x pruners x presets), compared in one table.

A sweep is a row that lists its child jobs (``sweeps.children``); the children are ordinary jobs
(``jobs.sweep_id``) that share the sweep's calibration settings. Everything else a sweep reports
is derived from its children when read: its status, progress, table, Pareto front and the
sparsest row within a perplexity budget. The functions here are pure (plain dicts in and out),
except ``child_jobs`` which reads the children's rows and ``delete_sweep`` which removes them.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from spruce.common import quotas, retention
from spruce.common.models import Job, Sweep, Team
from spruce.common.settings import Settings
from spruce.common.states import JobStatus
from spruce.common.storage import Storage

MAX_CHILDREN = 32
DELETED = "deleted"  # a child job deleted through DELETE /v1/jobs/{id}: it ends the child too
_TERMINAL = {JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value, DELETED}


@dataclass(frozen=True)
class Child:
    """One cell of the sweep's grid and the body its job is submitted with.

    ``index`` is the position of each axis value in the sweep body (``targets[i]``,
    ``pruners[j]``, ``presets[k]``; None where the axis was not given), so that a child that
    does not validate names the list item at fault.
    """

    target: float | str
    pruner: str | None
    preset: str | None
    index: tuple[int, int | None, int | None]
    body: dict[str, Any]


def expand(
    spec: Mapping[str, Any],
    targets: Sequence[float | str],
    pruners: Sequence[str] | None = None,
    presets: Sequence[str] | None = None,
) -> list[Child]:
    """The children of a sweep, targets outermost: ``spec`` with ``sparsity`` set to each target
    and, where given, ``method.pruner`` / ``method.preset`` to each pruner / preset."""
    pruner_axis: list[tuple[int | None, str | None]] = list(enumerate(pruners)) if pruners else [(None, None)]
    preset_axis: list[tuple[int | None, str | None]] = list(enumerate(presets)) if presets else [(None, None)]
    out = []
    for (i, target), (j, pruner), (k, preset) in itertools.product(
        enumerate(targets), pruner_axis, preset_axis
    ):
        body = copy.deepcopy(dict(spec))
        body["sparsity"] = target
        if pruner is not None or preset is not None:
            method = body.get("method", {})
            if isinstance(method, dict):  # anything else is left for validation to name
                axes = {"pruner": pruner, "preset": preset}
                body["method"] = {**method, **{k: v for k, v in axes.items() if v is not None}}
        out.append(Child(target=target, pruner=pruner, preset=preset, index=(i, j, k), body=body))
    return out


def grid_size(targets: Sequence[Any], pruners: Sequence[Any] | None, presets: Sequence[Any] | None) -> int:
    return len(targets) * max(1, len(pruners or ())) * max(1, len(presets or ()))


def item_param(child: Child, param: str | None) -> str:
    """The sweep body's field behind a child's error at ``param`` (a job body's field path)."""
    i, j, k = child.index
    if param == "sparsity":
        return f"targets[{i}]"
    if param == "method.pruner" and j is not None:
        return f"pruners[{j}]"
    if param == "method.preset" and k is not None:
        return f"presets[{k}]"
    return f"spec.{param}" if param else "spec"


# -- status and progress ---------------------------------------------------------------------------


def is_done(status: str) -> bool:
    return status in _TERMINAL


def sweep_status(statuses: Iterable[str], cancel_requested: bool) -> str:
    """The sweep's status from its children's: queued until one starts, running until all end;
    then succeeded if all succeeded, cancelled if the sweep was cancelled or a child was
    cancelled or deleted and none failed, else failed."""
    states = list(statuses)
    if not all(is_done(s) for s in states):
        started = any(s != JobStatus.QUEUED.value for s in states)
        return JobStatus.RUNNING.value if started else JobStatus.QUEUED.value
    if all(s == JobStatus.SUCCEEDED.value for s in states):
        return JobStatus.SUCCEEDED.value
    if cancel_requested or JobStatus.FAILED.value not in states:
        return JobStatus.CANCELLED.value
    return JobStatus.FAILED.value


def progress(statuses: Iterable[str]) -> dict[str, int]:
    states = list(statuses)
    return {"done": sum(is_done(s) for s in states), "total": len(states)}


# -- the table -------------------------------------------------------------------------------------


def table_row(child: Mapping[str, Any], status: str, results: Mapping[str, Any] | None) -> dict[str, Any]:
    """One child's row: its grid cell (``child``: job, target, pruner, preset), its status and,
    once it succeeded, achieved sparsity, perplexity per evaluation text and artifact sizes."""
    res = results or {}
    ppl = res.get("perplexity") or {}
    sizes = res.get("sizes") or {}
    return {
        "job": child["job"],
        "target": child["target"],
        "pruner": child.get("pruner"),
        "preset": child.get("preset"),
        "status": status,
        "sparsity": (res.get("sparsity") or {}).get("overall"),
        "perplexity": {"dense": dict(ppl.get("dense") or {}), "sparse": dict(ppl.get("sparse") or {})},
        "hf_bytes": sizes.get("hf_bytes"),
        "compact_bytes": sizes.get("compact_bytes"),
    }


def _point(row: Mapping[str, Any], text: str) -> tuple[float, float] | None:
    """(sparsity, sparse perplexity on ``text``) of a finished row, None where either is missing."""
    sparse = row["perplexity"]["sparse"].get(text)
    if row["status"] != JobStatus.SUCCEEDED.value or row["sparsity"] is None or sparse is None:
        return None
    return float(row["sparsity"]), float(sparse)


def pareto(rows: Sequence[Mapping[str, Any]], text: str) -> list[dict[str, Any]]:
    """The rows no other row beats on both axes (sparsity higher, perplexity on ``text`` lower,
    one of them strictly), by sparsity ascending."""
    points = [(p, row) for row in rows if (p := _point(row, text)) is not None]
    front = []
    for (s, ppl), row in points:
        dominated = any(s2 >= s and p2 <= ppl and (s2 > s or p2 < ppl) for (s2, p2), _ in points)
        if not dominated:
            front.append(((s, ppl), row))
    front.sort(key=lambda item: item[0])
    return [dict(row) for _, row in front]


def best_within(rows: Sequence[Mapping[str, Any]], text: str, within: float) -> dict[str, Any] | None:
    """The sparsest finished row whose perplexity on ``text`` is at most (1 + ``within``) times
    its dense perplexity (ties: the lower perplexity); None if no row is."""
    best: tuple[tuple[float, float], Mapping[str, Any]] | None = None
    for row in rows:
        point = _point(row, text)
        dense = row["perplexity"]["dense"].get(text)
        if point is None or dense is None or point[1] > float(dense) * (1.0 + within):
            continue
        key = (point[0], -point[1])
        if best is None or key > best[0]:
            best = (key, row)
    return None if best is None else dict(best[1])


# -- limits ----------------------------------------------------------------------------------------


def check_room(session: Session, team: Team, settings: Settings, count: int) -> None:
    """Raise ``quotas.QuotaExceeded`` unless the team may queue ``count`` more jobs at once: its
    storage quota as for one job, and its queued jobs plus ``count`` within ``max_queued``."""
    quotas.check_submit(session, team, settings)
    cap = quotas.limits_for(team, settings).max_queued
    if cap is None:
        return
    queued = quotas.count_jobs(session, team.id, JobStatus.QUEUED)
    if queued + count > cap:
        raise quotas.QuotaExceeded(
            "queue_limit_exceeded",
            f"this sweep's {count} jobs would give team {team.name!r} {queued + count} queued jobs, over "
            f"its limit max_queued={cap} ({queued} queued now); sweep fewer targets, or wait for jobs to start",
        )


# -- reading the children --------------------------------------------------------------------------


def child_jobs(session: Session, sweep: Sweep) -> dict[str, Job]:
    """The sweep's child jobs by id; a deleted child is absent."""
    rows = session.scalars(select(Job).where(Job.sweep_id == sweep.id, Job.deleted_at.is_(None))).all()
    return {job.id: job for job in rows}


def rows_of(sweep: Sweep, jobs: Mapping[str, Job]) -> list[dict[str, Any]]:
    """The table, one row per child in the sweep's order (a deleted child's row says so)."""
    out = []
    for child in sweep.children:
        job = jobs.get(child["job"])
        status = job.status if job is not None else DELETED
        out.append(table_row(child, status, job.results if job is not None else None))
    return out


# -- deleting --------------------------------------------------------------------------------------


def delete_sweep(session: Session, storage: Storage, sweep: Sweep, by: str) -> list[str]:
    """Delete the sweep: each child as DELETE /v1/jobs/{id} deletes a job (``retention.delete_job``:
    queued ones cancelled, running ones asked to stop and removed when their worker stops), then
    the sweep's row (its Idempotency-Key freed with it). Returns the children still running.

    Children first: a failure midway leaves the sweep listing the children not yet deleted, and
    deleting it again finishes. Raises ``StaleStatus`` if a child kept changing. Commits.
    """
    running = [
        job.id
        for job in child_jobs(session, sweep).values()
        if not retention.delete_job(session, storage, job, by)
    ]
    session.delete(sweep)
    session.commit()
    return running
