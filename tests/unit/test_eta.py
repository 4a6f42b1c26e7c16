"""A running job's ETA: none before the layer walk has data, then honest (issue 28).

The first test drives the worker's ``Reporter`` through a run shaped like ``compress`` (its stages
and per-layer reports, via ``core.progress.Run``) on a fake clock, so every second is known; the
second runs a tiny model for real.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from spruce.common.db import session_scope, upgrade
from spruce.common.jobs import set_status
from spruce.common.keys import create_key
from spruce.common.models import Job
from spruce.common.settings import Settings
from spruce.common.states import JobStatus
from spruce.core.progress import Eta, Progress, Run
from spruce.worker.runner import Reporter

pytestmark = pytest.mark.unit

LAYERS = 8
# Seconds per stage of a run whose evaluation costs more than the fixed STAGES shares assume
# (long evaluation texts, a small calibration set): where the old rate-of-fraction estimate said
# about half, or a third, of the time left.
LOAD, CALIBRATION, EVALUATE, PER_LAYER, EXPORT = 2.0, 4.0, 80.0, 8.0, 4.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _running_job(tmp_path: Path) -> tuple[str, str]:
    url = Settings(data_dir=tmp_path).resolved_database_url
    upgrade(url)
    with session_scope(url) as s:
        key = create_key(s, "acme", "ci")
        job = Job(team_id=key.row.team_id, api_key_id=key.row.id, submitted_by="ci", spec={})
        s.add(job)
        s.flush()
        set_status(s, job, JobStatus.RUNNING)
        return url, job.id


def test_no_eta_before_the_first_layer_then_within_a_factor_and_decreasing(tmp_path: Path) -> None:
    url, job_id = _running_job(tmp_path)
    clock = Clock()
    reporter = Reporter(
        url=url, job_id=job_id, interval=0.0, check_interval=3600.0, deadline=float("inf"), clock=clock
    )
    seen: list[tuple[str, int | None, int | None, float]] = []  # (stage, layer, eta, time)

    def report(p: Progress) -> None:
        reporter(p)
        with session_scope(url) as s:
            row = s.get(Job, job_id)
            assert row is not None
            seen.append((p.stage, p.layer, row.eta_seconds, clock.now))

    run = Run(report, None)
    for stage, seconds in (("load", LOAD), ("calibration", CALIBRATION), ("evaluate_dense", EVALUATE)):
        with run.stage(stage):
            for i in range(1, LAYERS + 1):
                clock.now += seconds / LAYERS
                if stage == "evaluate_dense":
                    run.progress(stage, i / LAYERS, i, LAYERS)
    with run.stage("prune"):
        for i in range(1, LAYERS + 1):
            clock.now += PER_LAYER
            run.progress("prune", i / LAYERS, i, LAYERS)
    with run.stage("evaluate_sparse"):
        for i in range(1, LAYERS + 1):
            clock.now += EVALUATE / LAYERS
            run.progress("evaluate_sparse", i / LAYERS, i, LAYERS)
    with run.stage("export"):
        clock.now += EXPORT
    run.progress("export", 1.0)
    end = clock.now

    first = next(k for k, (stage, layer, _, _) in enumerate(seen) if stage == "prune" and layer == 1)
    assert [eta for _, _, eta, _ in seen[:first]] == [None] * first  # nothing to go on yet
    etas = [(eta, end - at) for _, _, eta, at in seen[first:] if eta is not None]
    assert len(etas) == len(seen) - first  # and from then on, always one
    for eta, left in etas:
        if left >= 10:  # the last seconds: rounding, and the final stages' small parts
            assert 0.5 * left <= eta <= 2 * left, (eta, left)
    assert etas[0][0] == pytest.approx(etas[0][1], rel=0.1)  # a steady run: close from the first layer on
    values = [eta for eta, _ in etas]
    assert values == sorted(values, reverse=True)  # a steady run's ETA only falls
    assert values[-1] == 0


@pytest.mark.engine
def test_real_tiny_run_gives_no_eta_before_its_first_layer_and_one_at_every_update_after(tmp_path: Path) -> None:
    from spruce.core.compress import compress
    from spruce.core.spec import CompressionSpec
    from tests.tiny import tiny_model_dir

    model = tiny_model_dir(tmp_path, "llama", layers=3, hidden=64)
    spec = CompressionSpec.from_dict(
        {
            "model": str(model),
            "sparsity": 0.5,
            "method": {"pruner": "magnitude", "induction": False},
            "calibration": {"source": "pydoc", "samples": 4, "seq_len": 32, "seed": 1},
            "evaluation": {"sources": ["pydoc"]},
            "experimental": {"evaluation": {"seq_len": 32, "max_windows": 2}},
        }
    )
    estimate = Eta()
    seen: list[tuple[str, int | None, int | None, float]] = []

    def on_progress(p: Progress) -> None:
        now = time.monotonic()
        seen.append((p.stage, p.layer, estimate.update(p, now), now))

    compress(spec, out_dir=tmp_path / "out", on_progress=on_progress)
    first = next(k for k, (stage, layer, _, _) in enumerate(seen) if stage == "prune" and layer == 1)
    assert all(eta is None for _, _, eta, _ in seen[:first])
    # How close it is depends on the machine's load: the fake clock above tests the arithmetic.
    assert all(eta is not None and eta >= 0 for _, _, eta, _ in seen[first:])
