"""Workers that die and jobs that are stuck, with real worker processes: a job that kills its worker
on every attempt fails after SPRUCE_MAX_ATTEMPTS with worker_lost; a running job whose heartbeat
stopped is re-queued by a worker's sweep and finished (or failed once it has no attempts left); a
message delivered again while the job's heartbeat is fresh starts no second run; and the same
recovery in the default mode, whose filesystem broker never redelivers on its own."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from spruce.common.models import utcnow
from tests.integration.conftest import TINY_SPEC, wait_until
from tests.integration.fleet import Fleet, default_fleet, fleet, slow_spec  # noqa: F401 (fixtures)
from tests.tiny import tiny_model_dir

pytestmark = pytest.mark.integration


@contextmanager
def beating(fleet: Fleet, job_id: str) -> Iterator[None]:  # noqa: F811
    """Stand in for a live worker on ``job_id``: refresh its heartbeat until the block ends."""
    from sqlalchemy import update

    from spruce.common.db import session_scope
    from spruce.common.models import Job

    stopped = threading.Event()

    def beat() -> None:
        while True:
            with session_scope(fleet.url) as session:
                session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow()))
            if stopped.wait(0.3):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        thread.join(10)


def test_a_job_that_kills_every_worker_fails_after_max_attempts(
    fleet: Fleet,  # noqa: F811
    models: dict[str, Path],
) -> None:
    fleet.env["SPRUCE_MAX_ATTEMPTS"] = "2"
    model = tiny_model_dir(models["tiny"].parent, "llama", layers=6, hidden=128)
    job_id = fleet.submit(slow_spec(model))
    worker = fleet.start_worker()
    for attempt in (1, 2):  # as if each attempt ran out of memory
        fleet.wait(
            job_id, lambda j, n=attempt: j.attempts == n and j.status == "running", f"attempt {attempt}"
        )
        spare = fleet.start_worker(wait=False)  # it takes the job once this worker is dead
        if attempt == 1:
            fleet.wait(job_id, lambda j: j.stage == "prune", "the layer walk")
        fleet.kill(worker)
        seen = fleet.job(job_id)  # what the row shows of the lost attempt
        fleet.ready(spare)
        worker = spare
    job = fleet.done(job_id)
    assert (job.status, job.error_code, job.attempts) == ("failed", "worker_lost", 2), fleet.log_text()
    message = job.error_message or ""
    where = f"at stage {seen.stage}" if seen.stage else "before its first stage"
    assert "lost 2 times" in message and where in message and "giving up after 2 attempts" in message
    assert job.results is None
    # Nothing half-done is left behind: no artifacts, no checkpoint.
    assert fleet.storage().list(f"jobs/{job_id}") == []


def test_stuck_jobs_are_requeued_or_failed_and_fresh_ones_left_alone(
    fleet: Fleet,  # noqa: F811
    models: dict[str, Path],
) -> None:
    spec = {**TINY_SPEC, "model": str(models["tiny"])}
    long_ago = utcnow() - timedelta(minutes=10)
    # Rows as a worker that died leaves them: running, old heartbeat, and no message anywhere.
    stuck = fleet.submit(
        spec,
        send=False,
        status="running",
        attempts=1,
        worker="gpu9@gone",
        stage="prune",
        heartbeat_at=long_ago,
    )
    spent = fleet.submit(
        spec,
        send=False,
        status="running",
        attempts=3,
        worker="gpu9@gone",
        stage="load",
        heartbeat_at=long_ago,
    )
    # A job another worker is running right now (alive: its heartbeat stays fresh)...
    busy = fleet.submit(spec, send=False, status="running", attempts=1, worker="gpu8@busy")
    with beating(fleet, busy):
        fleet.start_worker()
        job = fleet.done(stuck)
        assert (job.status, job.attempts) == ("succeeded", 2), (job.error_message, fleet.log_text())
        assert any("re-queued: no heartbeat from gpu9@gone" in e.message for e in fleet.events(stuck))

        job = fleet.done(spent)
        assert (job.status, job.error_code) == ("failed", "worker_lost")
        assert "lost 3 times" in (job.error_message or "") and "at stage load" in (job.error_message or "")

        # ...and a copy of its message arrives (a visibility timeout shorter than the job).
        fleet.send(busy)
        drop = f"job {busy} is running on gpu8@busy with a fresh heartbeat; not starting a second run"
        wait_until(lambda: drop in fleet.logs[0].read_text(), 60, "the duplicate to be dropped")
        job = fleet.job(busy)
        assert (job.status, job.attempts, job.worker) == ("running", 1, "gpu8@busy")  # no second run
    # gpu8 dies: once its heartbeat is stale, the sweep hands the job to the live worker.
    job = fleet.done(busy)
    assert (job.status, job.attempts) == ("succeeded", 2)


def test_default_mode_recovers_a_job_whose_worker_died(
    default_fleet: Fleet,  # noqa: F811
    models: dict[str, Path],
) -> None:
    """SQLite + the filesystem broker: a killed worker's message is gone for good; the sweep of the
    next worker re-queues the job and it finishes, resuming from its local checkpoint."""
    model = tiny_model_dir(models["tiny"].parent, "llama", layers=6, hidden=128)
    job_id = default_fleet.submit(slow_spec(model))
    worker = default_fleet.start_worker()
    default_fleet.wait(job_id, lambda j: j.status == "running", "the first attempt")
    spare = default_fleet.start_worker(wait=False)
    default_fleet.wait(job_id, lambda j: j.stage == "prune" and (j.layer or 0) >= 1, "layer 1 done")
    default_fleet.kill(worker)
    default_fleet.ready(spare)
    job = default_fleet.done(job_id)
    assert (job.status, job.attempts, job.resumes) == ("succeeded", 2, 1), default_fleet.log_text()
    assert any("re-queued" in e.message for e in default_fleet.events(job_id))
    assert job.results["resume"]["from_layer"] >= 1
    assert default_fleet.storage().list(f"jobs/{job_id}/checkpoint") == []


def test_dry_run_worker_runs_jobs_without_a_model(fleet: Fleet) -> None:  # noqa: F811
    """SPRUCE_DRY_RUN=1: each job is claimed, walks its stages with progress and events, and
    succeeds with dry-run results and no artifacts; the model is never loaded (it does not exist)."""
    import time

    fleet.env["SPRUCE_DRY_RUN"] = "1"
    fleet.start_worker()
    spec = {**TINY_SPEC, "model": "nobody/no-such-model"}
    start = time.monotonic()
    ids = [fleet.submit(spec) for _ in range(20)]
    jobs = [fleet.done(job_id) for job_id in ids]
    elapsed = time.monotonic() - start
    assert [(j.status, j.attempts, j.progress) for j in jobs] == [("succeeded", 1, 1.0)] * len(ids)
    assert all(j.results["dry_run"] is True and j.results["stages"][0] == "load" for j in jobs)
    stages = [e.stage for e in fleet.events(ids[0]) if e.type == "stage"]
    assert stages == ["load", "calibration", "prune", "evaluate_sparse", "export"]
    store = fleet.storage()
    assert [k for job_id in ids for k in store.list(f"jobs/{job_id}")] == []  # no artifacts, no checkpoints
    print(f"dry run: {len(ids)} jobs in {elapsed:.1f}s ({len(ids) / elapsed:.1f} jobs/s, one worker)")
