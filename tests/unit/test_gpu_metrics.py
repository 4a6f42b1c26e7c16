"""GPU memory in /metrics: a CUDA worker's heartbeat records the running job's GPU memory, the API
serves it per worker; a CPU worker has no GPU series."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spruce.api import metrics
from spruce.common.db import session_scope
from spruce.common.jobs import set_status
from spruce.common.models import Job
from spruce.common.states import JobStatus
from spruce.worker import liveness
from spruce.worker.liveness import Heartbeat, gpu_memory
from tests.unit.service import Service

pytestmark = pytest.mark.unit

BODY: dict[str, Any] = {"model": "smollm2-135m", "sparsity": 0.5}
GIB = 2**30
READING = {
    "device": "NVIDIA Fake 80GB",
    "allocated_bytes": 3 * GIB,
    "peak_bytes": 5 * GIB,
    "total_bytes": 80 * GIB,
}
GPU_FAMILIES = (
    "spruce_worker_gpu_memory_bytes",
    "spruce_worker_gpu_memory_peak_bytes",
    "spruce_worker_gpu_memory_total_bytes",
)


def _running(svc: Service, worker: str, device: str) -> str:
    job_id = svc.client.post("/v1/jobs", json=BODY, headers=svc.h()).json()["id"]
    with session_scope(svc.url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        set_status(s, job, JobStatus.RUNNING)
        job.worker, job.attempts, job.device = worker, 1, device
    return job_id


def _samples(svc: Service) -> dict[str, list[tuple[dict[str, str], float]]]:
    r = svc.client.get("/metrics")
    assert r.status_code == 200, r.text
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    return {name: [(s.labels, s.value) for s in families[name].samples] for name in GPU_FAMILIES}


def test_a_cuda_workers_heartbeat_reaches_metrics_and_a_cpu_worker_has_no_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = liveness.gpu_memory

    def fake(device: str | None) -> dict[str, Any] | None:  # a CUDA reading on cuda:0 only
        return dict(READING) if device == "cuda:0" else real(device)

    monkeypatch.setattr(liveness, "gpu_memory", fake)
    svc = Service(tmp_path)
    on_gpu, on_cpu = _running(svc, "celery@gpu0", "cuda:0"), _running(svc, "celery@cpu0", "cpu")
    retried = _running(svc, "celery@cpu1", "cpu")
    with session_scope(svc.url) as s:  # its earlier attempt ran on a GPU; the heartbeat has not come yet
        job = s.get(Job, retried)
        assert job is not None
        job.gpu_memory = dict(READING)
    assert Heartbeat(svc.url, on_gpu, 1, 10.0, device="cuda:0").beat()
    assert Heartbeat(svc.url, on_cpu, 1, 10.0, device="cpu").beat()
    with session_scope(svc.url) as s:
        assert s.get(Job, on_gpu).gpu_memory == READING  # type: ignore[union-attr]
        assert s.get(Job, on_cpu).gpu_memory is None  # type: ignore[union-attr]

    samples = _samples(svc)
    labels = {"worker": "celery@gpu0", "device": "NVIDIA Fake 80GB"}
    assert samples["spruce_worker_gpu_memory_bytes"] == [(labels, 3 * GIB)]
    assert samples["spruce_worker_gpu_memory_peak_bytes"] == [(labels, 5 * GIB)]
    assert samples["spruce_worker_gpu_memory_total_bytes"] == [(labels, 80 * GIB)]

    with session_scope(svc.url) as s:  # a finished job's last reading stays on its row, off the metrics
        job = s.get(Job, on_gpu)
        assert job is not None
        set_status(s, job, JobStatus.SUCCEEDED, results={})
    monkeypatch.setattr(metrics, "SNAPSHOT_TTL", 0.0)  # read the database again, not the cached snapshot
    assert all(series == [] for series in _samples(svc).values())


def test_gpu_memory_reads_nothing_on_a_cpu() -> None:
    assert gpu_memory(None) is None and gpu_memory("cpu") is None
    import torch

    reading = gpu_memory("cuda")
    if not torch.cuda.is_available():
        assert reading is None  # no CUDA: no reading, and no error
    else:
        assert reading is not None and 0 <= reading["allocated_bytes"] <= reading["peak_bytes"]
        assert reading["peak_bytes"] <= reading["total_bytes"] and reading["device"]
