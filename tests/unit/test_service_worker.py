"""The worker's job runner with the engine replaced by a stub: status outcomes, retries, progress
throttling and monotonicity, cancel checks, dataset resolution. The real engine runs in
tests/integration."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from spruce.common.db import session_scope, upgrade
from spruce.common.jobs import set_status
from spruce.common.keys import create_key
from spruce.common.models import Artifact, Dataset, Job, JobEvent
from spruce.common.settings import Settings
from spruce.common.states import JobStatus
from spruce.common.storage import LocalStorage
from spruce.core.errors import Cancelled, DatasetUnavailable, SpecError, SystemFault
from spruce.core.progress import Progress
from spruce.worker import runner
from spruce.worker.claim import claim
from spruce.worker.runner import Reporter, RetryLater, backoff, resolve_inputs, run

pytestmark = pytest.mark.unit

SPEC = {"model": "smollm2-135m", "sparsity": 0.5}


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path, device="cpu", max_retries=1, retry_backoff=0.0, progress_interval=0.0)
    upgrade(s.resolved_database_url)
    return s


def make_job(settings: Settings, spec: dict[str, Any] | None = None) -> str:
    with session_scope(settings.resolved_database_url) as s:
        key = create_key(s, "acme", "ci")
        job = Job(team_id=key.row.team_id, api_key_id=key.row.id, submitted_by="ci", spec=spec or SPEC)
        s.add(job)
        s.flush()
        return job.id


def load(settings: Settings, job_id: str) -> tuple[Job, list[JobEvent], list[Artifact]]:
    with session_scope(settings.resolved_database_url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        events = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))
        arts = list(s.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))
        s.expunge_all()
        return job, events, arts


def stub(monkeypatch: pytest.MonkeyPatch, body: Callable[[dict[str, Any], Path, Reporter], None]) -> None:
    def fake(
        spec_dict: dict[str, Any],
        device: str,
        out_dir: Path,
        reporter: Reporter,
        settings: Settings,
        checkpoint: Any,
    ) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        body(spec_dict, out_dir, reporter)

    monkeypatch.setattr(runner, "_compress", fake)


def good_run(spec: dict[str, Any], out: Path, rep: Reporter) -> None:
    for stage, f in [("load", 0.0), ("load", 0.05), ("prune", 0.3), ("prune", 0.2), ("export", 1.0)]:
        rep(Progress(stage=stage, fraction=f, layer=1, layers=2))
    (out / "hf").mkdir()
    (out / "hf" / "config.json").write_text("{}")
    report = {
        "perplexity": {"dense": {"pydoc": 10.0}, "sparse": {"pydoc": 12.0}},
        "sparsity": {"overall": 0.5},
        "sizes": {},
        "timings": {"total": 1.0},
        "layers": [],
        "plan": {"pruner": "wanda", "swaps": 20},
        "other": 1,
    }
    (out / "report.json").write_text(json.dumps(report))


def test_success_uploads_and_records(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    stub(monkeypatch, good_run)
    job_id = make_job(settings)
    assert run(job_id, settings) == "succeeded"
    job, events, arts = load(settings, job_id)
    assert (job.status, job.progress, job.attempts, job.device) == ("succeeded", 1.0, 1, "cpu")
    assert job.results is not None and set(job.results) == {
        "perplexity",
        "evaluation_metrics",
        "tasks",
        "sparsity",
        "sizes",
        "timings",
        "layers",
        "resume",
        "induction",
        "plan",
    }
    assert job.results["perplexity"]["sparse"] == {"pydoc": 12.0} and job.results["resume"] is None
    assert job.results["plan"] == {"pruner": "wanda", "swaps": 20}
    assert [a.name for a in arts] == ["hf/config.json", "report.json"]
    store = LocalStorage(settings.resolved_artifacts_dir)
    assert store.exists(f"jobs/{job_id}/report.json") and arts[0].size == 2
    stages = [e.stage for e in events if e.type == "stage"]
    assert stages == ["load", "prune", "export"]  # one event per stage change
    statuses = [(e.data or {}).get("to") for e in events if e.type == "status"]
    assert statuses == ["running", "succeeded"]
    assert run(job_id, settings) == "skipped"  # a redelivered message for a finished job


def test_progress_is_monotonic_and_throttled(settings: Settings) -> None:
    job_id = make_job(settings)
    url = settings.resolved_database_url
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        set_status(s, job, JobStatus.RUNNING)
    rep = Reporter(
        url=url, job_id=job_id, interval=3600.0, check_interval=0.0, deadline=float("inf"), floor=0.1
    )
    rep(Progress("prune", 0.05))  # first report: a stage change, written, but never below the floor
    assert load(settings, job_id)[0].progress == pytest.approx(0.1)
    rep(Progress("prune", 0.5))  # same stage within the interval: not written
    assert load(settings, job_id)[0].progress == pytest.approx(0.1)
    rep(Progress("evaluate_sparse", 0.4))  # new stage: written, but not lower than 0.5 already seen
    job = load(settings, job_id)[0]
    assert (job.stage, job.progress) == ("evaluate_sparse", pytest.approx(0.5))


def test_should_stop_reads_cancel_flag_and_deadline(settings: Settings) -> None:
    job_id = make_job(settings)
    url = settings.resolved_database_url
    rep = Reporter(url=url, job_id=job_id, interval=0.0, check_interval=0.0, deadline=float("inf"))
    assert rep.should_stop() is False
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.cancel_requested = True
    assert rep.should_stop() is True
    late = Reporter(url=url, job_id=job_id, interval=0.0, check_interval=10.0, deadline=0.0)
    assert late.should_stop() is True and late.timed_out


def test_user_error_fails_at_once(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    def bad(spec: dict[str, Any], out: Path, rep: Reporter) -> None:
        raise SpecError("no such thing", param="method.pruner")

    stub(monkeypatch, bad)
    job_id = make_job(settings)
    assert run(job_id, settings) == "failed"
    job = load(settings, job_id)[0]
    assert (job.error_code, job.error_message, job.attempts) == (
        "invalid_spec",
        "method.pruner: no such thing",
        1,
    )


def test_system_fault_retries_then_fails(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(spec: dict[str, Any], out: Path, rep: Reporter) -> None:
        raise SystemFault("GPU fell off the bus")

    stub(monkeypatch, crash)
    job_id = make_job(settings)
    with pytest.raises(RetryLater):
        run(job_id, settings)
    job, events, _ = load(settings, job_id)
    assert job.status == "queued" and "retrying" in events[-1].message
    assert run(job_id, settings) == "failed"  # max_retries=1: this was the last attempt
    job = load(settings, job_id)[0]
    assert job.error_code == "system_error" and "gave up after 2 attempts" in (job.error_message or "")
    assert job.attempts == 2


def test_cancelled_run_and_cancelled_while_queued(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stopping(spec: dict[str, Any], out: Path, rep: Reporter) -> None:
        raise Cancelled("cancelled between layers")

    stub(monkeypatch, stopping)
    job_id = make_job(settings)
    assert run(job_id, settings) == "cancelled"
    queued = make_job(settings)
    with session_scope(settings.resolved_database_url) as s:
        job = s.get(Job, queued)
        assert job is not None
        set_status(s, job, JobStatus.CANCELLED)
    assert run(queued, settings) == "skipped"
    assert load(settings, queued)[0].attempts == 0


def test_backoff_doubles() -> None:
    assert [backoff(i, 30.0) for i in range(4)] == [30.0, 60.0, 120.0, 240.0]
    assert backoff(20, 30.0) == 3600.0


def test_resolve_inputs_fetches_team_datasets(settings: Settings, tmp_path: Path) -> None:
    store = LocalStorage(settings.resolved_artifacts_dir)
    url = settings.resolved_database_url
    with session_scope(url) as s:
        key = create_key(s, "acme", "ci")
        other = create_key(s, "rival", "x")
        team, rival = key.row.team_id, other.row.team_id
        s.add(
            Dataset(
                id="ds_" + "a" * 24,
                team_id=team,
                name="d",
                filename="d.txt",
                format="txt",
                size=5,
                sha256="0" * 64,
                records=1,
                storage_key="datasets/d.txt",
            )
        )
    import io

    store.put_stream("datasets/d.txt", io.BytesIO(b"hello"))
    spec: dict[str, Any] = {
        "model": "smollm2-135m",
        "sparsity": 0.5,
        "calibration": {"source": "ds_" + "a" * 24},
        "evaluation": {"sources": ["pydoc", "ds_" + "a" * 24]},
    }
    out = resolve_inputs(spec, team, settings, store, tmp_path / "in")
    local = out["calibration"]["source"]
    assert Path(local).read_text() == "hello" and out["evaluation"]["sources"] == ["pydoc", local]
    assert spec["calibration"]["source"] == "ds_" + "a" * 24  # the row's spec is not modified
    with pytest.raises(DatasetUnavailable):
        resolve_inputs(spec, rival, settings, store, tmp_path / "in2")
    with pytest.raises(SpecError):
        resolve_inputs({**spec, "model": "/etc"}, team, settings, store, tmp_path / "in3")


def test_dry_run_walks_stages_without_the_engine(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(spec: dict[str, Any], out: Path, rep: Reporter) -> None:
        raise AssertionError("a dry run must not call the engine")

    stub(monkeypatch, never)
    job_id = make_job(settings, {"model": "no/such-model", "sparsity": 0.5})
    assert run(job_id, settings.model_copy(update={"dry_run": True})) == "succeeded"
    job, events, arts = load(settings, job_id)
    assert (job.status, job.progress, job.attempts, arts) == ("succeeded", 1.0, 1, [])
    assert job.results is not None and job.results["dry_run"] is True
    assert [e.stage for e in events if e.type == "stage"] == list(runner.DRY_RUN_STAGES)
    prune = next(e for e in events if e.type == "stage" and e.stage == "prune")
    assert prune.data is not None and prune.data["layers"] == runner.DRY_RUN_LAYERS


# -- liveness: redelivery, takeover, attempt limit, sweep, heartbeat, checkpoints -------------------


def set_running(settings: Settings, job_id: str, *, age: float, attempts: int = 1, **values: Any) -> None:
    """The row as a worker would leave it: running, ``attempts`` started, last heartbeat ``age`` s ago."""
    from datetime import timedelta

    from spruce.common.models import utcnow

    with session_scope(settings.resolved_database_url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        set_status(s, job, JobStatus.RUNNING)
        job.attempts, job.worker = attempts, "gpu0@dead"
        job.heartbeat_at = utcnow() - timedelta(seconds=age)
        for key, value in values.items():
            setattr(job, key, value)


def test_redelivery_with_fresh_heartbeat_starts_no_second_run(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub(monkeypatch, good_run)
    job_id = make_job(settings)
    set_running(settings, job_id, age=1.0)
    assert run(job_id, settings) == "skipped"
    job, events, _ = load(settings, job_id)
    assert (job.status, job.attempts, job.worker) == ("running", 1, "gpu0@dead")
    assert not any("taken over" in e.message for e in events)


def test_redelivery_with_stale_heartbeat_takes_over(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub(monkeypatch, good_run)
    job_id = make_job(settings)
    set_running(settings, job_id, age=settings.heartbeat_timeout + 5)
    assert run(job_id, settings, worker="gpu1@alive") == "succeeded"
    job, events, _ = load(settings, job_id)
    assert (job.status, job.attempts, job.worker) == ("succeeded", 2, "gpu1@alive")
    assert any("gpu0@dead stopped heart-beating; taken over by gpu1@alive" in e.message for e in events)


def test_a_job_that_keeps_losing_its_worker_fails(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub(monkeypatch, good_run)
    job_id = make_job(settings)
    set_running(
        settings, job_id, age=settings.heartbeat_timeout + 5, attempts=3, stage="prune", layer=2, layers=4
    )
    assert settings.max_attempts == 3
    import io

    store = LocalStorage(settings.resolved_artifacts_dir)
    store.put_stream(f"jobs/{job_id}/checkpoint/head.json", io.BytesIO(b"{}"))
    assert run(job_id, settings) == "skipped"
    assert store.list(f"jobs/{job_id}") == []  # nothing will resume it: the checkpoint is gone
    job = load(settings, job_id)[0]
    assert (job.status, job.error_code, job.attempts) == ("failed", "worker_lost", 3)
    assert "lost 3 times" in (job.error_message or "") and "stage prune, layer 2 of 4" in (
        job.error_message or ""
    )


def test_sweep_requeues_stale_jobs_once_and_fails_exhausted_ones(settings: Settings) -> None:
    from spruce.worker.liveness import sweep

    stale, exhausted, fresh = make_job(settings), make_job(settings), make_job(settings)
    set_running(settings, stale, age=settings.heartbeat_timeout + 1)
    set_running(settings, exhausted, age=settings.heartbeat_timeout + 1, attempts=3, stage="load")
    set_running(settings, fresh, age=1.0)
    sent: list[str] = []
    cleaned: list[str] = []
    assert sweep(settings, sent.append, on_failed=cleaned.append) == {stale: "requeued", exhausted: "failed"}
    assert sent == [stale] and cleaned == [exhausted]  # a message only for the job that may run again
    assert sweep(settings, sent.append) == {} and sent == [stale]  # a second sweeper finds nothing
    job, events, _ = load(settings, stale)
    assert (job.status, job.attempts) == ("queued", 1)
    assert "re-queued: no heartbeat from gpu0@dead" in events[-1].message
    job = load(settings, exhausted)[0]
    assert (job.status, job.error_code) == ("failed", "worker_lost")
    assert "lost 3 times" in (job.error_message or "") and "stage load" in (job.error_message or "")
    assert load(settings, fresh)[0].status == "running"


def test_sweep_loses_the_race_to_a_worker_that_took_over(settings: Settings) -> None:
    from spruce.worker.liveness import sweep

    job_id = make_job(settings)
    set_running(settings, job_id, age=settings.heartbeat_timeout + 1)

    def send_and_a_worker_takes_it_at_once(sent_id: str) -> None:
        assert claim(settings.resolved_database_url, sent_id, "gpu1@fast", "cpu", settings) is not None

    assert sweep(settings, send_and_a_worker_takes_it_at_once) == {}
    job = load(settings, job_id)[0]
    assert (job.status, job.attempts, job.worker) == ("running", 2, "gpu1@fast")  # not re-queued under it


def test_heartbeat_refreshes_and_notices_a_takeover(settings: Settings) -> None:
    from spruce.worker.liveness import Heartbeat

    job_id = make_job(settings)
    set_running(settings, job_id, age=60.0)
    before = load(settings, job_id)[0]
    beat = Heartbeat(settings.resolved_database_url, job_id, attempt=1, interval=0.05)
    assert beat.beat() is True
    after = load(settings, job_id)[0]
    assert before.heartbeat_at is not None and after.heartbeat_at is not None
    assert after.heartbeat_at > before.heartbeat_at and after.updated_at == before.updated_at
    with session_scope(settings.resolved_database_url) as s:
        row = s.get(Job, job_id)
        assert row is not None
        row.attempts = 2  # another worker took the job over
    beat.start()
    assert beat.lost.wait(30)
    beat.stop()


def test_superseded_attempt_writes_nothing(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import time as _time

    fast = settings.model_copy(update={"heartbeat_interval": 0.05})

    def taken_over_midway(spec: dict[str, Any], out: Path, rep: Reporter) -> None:
        with session_scope(fast.resolved_database_url) as s:
            row = s.get(Job, rep.job_id)
            assert row is not None
            row.attempts += 1
        deadline = _time.monotonic() + 30
        while not rep.should_stop():
            assert _time.monotonic() < deadline
            _time.sleep(0.02)
        raise Cancelled("stopped between layers")

    stub(monkeypatch, taken_over_midway)
    job_id = make_job(fast)
    assert run(job_id, fast) == "superseded"
    job = load(fast, job_id)[0]
    assert (job.status, job.attempts) == ("running", 2)  # left to its new owner, not cancelled


def test_system_fault_is_not_retried_past_max_attempts(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(spec: dict[str, Any], out: Path, rep: Reporter) -> None:
        raise SystemFault("GPU fell off the bus")

    stub(monkeypatch, crash)
    job_id = make_job(settings)
    with session_scope(settings.resolved_database_url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.attempts = 2  # two earlier deliveries were lost
    assert run(job_id, settings) == "failed"  # max_retries=1 left one retry, attempts none
    assert "gave up after 3 attempts" in (load(settings, job_id)[0].error_message or "")


def test_checkpoint_is_counted_on_resume_kept_for_a_retry_and_deleted_at_the_end(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from spruce.core.checkpoint import LayerCheckpoint

    store = LocalStorage(settings.resolved_artifacts_dir)
    calls: list[str] = []

    def body(spec: dict[str, Any], out: Path, rep: Reporter, checkpoint: Any) -> None:
        if not calls:  # first attempt: one layer done, then a fault
            checkpoint.save(
                LayerCheckpoint(
                    0, 2, {"w": torch.ones(2)}, [torch.zeros(1, 2, 2)], torch.Generator().get_state(), {}
                )
            )
            calls.append("saved")
            raise SystemFault("node lost")
        state = checkpoint.load()
        assert state is not None and state.next_layer == 1
        calls.append("resumed")
        good_run(spec, out, rep)

    def fake(
        spec_dict: dict[str, Any],
        device: str,
        out_dir: Path,
        reporter: Reporter,
        settings: Settings,
        checkpoint: Any,
    ) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        body(spec_dict, out_dir, reporter, checkpoint)

    monkeypatch.setattr(runner, "_compress", fake)
    job_id = make_job(settings)
    with pytest.raises(RetryLater):
        run(job_id, settings)
    assert store.exists(f"jobs/{job_id}/checkpoint/head.json")  # kept: the retry resumes from it
    assert run(job_id, settings) == "succeeded"
    job, events, arts = load(settings, job_id)
    assert calls == ["saved", "resumed"] and job.resumes == 1
    resume = [e for e in events if e.type == "resume"]
    assert len(resume) == 1 and resume[0].data == {"from_layer": 1, "layers": 2}
    assert "1 of 2 layers restored, continuing at layer 2 of 2" in resume[0].message
    assert store.list(f"jobs/{job_id}/checkpoint") == []
    assert sorted(store.list(f"jobs/{job_id}")) == sorted(f"jobs/{job_id}/{a.name}" for a in arts)
