"""A worker process killed with SIGKILL in the middle of the layer walk: Redis delivers the job
again (acks_late, a short visibility timeout), a new worker continues from the checkpoint in S3
after the last finished layer, and the result is bit for bit the result of a run that was never
interrupted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load

from tests.integration.fleet import Fleet, fleet, slow_spec  # noqa: F401 (fleet is a fixture)
from tests.tiny import tiny_model_dir

pytestmark = pytest.mark.integration

LAYERS = 6


def test_killed_worker_resumes_from_the_last_finished_layer(fleet: Fleet, models: dict[str, Path]) -> None:  # noqa: F811
    model = tiny_model_dir(models["tiny"].parent, "llama", layers=LAYERS, hidden=128)
    spec = slow_spec(model)
    first = fleet.start_worker()
    reference = fleet.submit(spec)
    assert fleet.done(reference).status == "succeeded"

    job_id = fleet.submit(spec)
    fleet.wait(job_id, lambda j: j.status == "running", "the first attempt")
    second = fleet.start_worker(wait=False)  # idle until the job is delivered again
    fleet.wait(job_id, lambda j: j.stage == "prune" and (j.layer or 0) >= 1, "layer 1 done")
    fleet.kill(first)
    # What the dead worker had committed: the new attempt must continue right after it.
    head = json.loads(fleet.read(f"jobs/{job_id}/checkpoint/head.json"))
    assert head["layers"] == LAYERS and head["index"] >= 0
    assert fleet.job(job_id).status == "running"  # nobody has noticed yet

    fleet.ready(second)
    job = fleet.done(job_id)
    assert job.status == "succeeded", (job.error_code, job.error_message, fleet.log_text())
    assert (job.attempts, job.resumes) == (2, 1)

    resumed_at = head["index"] + 1
    assert job.results["resume"]["from_layer"] == resumed_at
    report = fleet.report(job_id)
    assert report["resumed"] is True and report["resume"]["from_layer"] == resumed_at
    events = fleet.events(job_id)
    resume = [e for e in events if e.type == "resume"]
    assert len(resume) == 1 and resume[0].data == {"from_layer": resumed_at, "layers": LAYERS}
    assert any("taken over" in e.message or "re-queued" in e.message for e in events)

    # Identical to the uninterrupted run: every tensor, and the measured numbers.
    got = load(fleet.read(f"jobs/{job_id}/hf/model.safetensors"))
    want = load(fleet.read(f"jobs/{reference}/hf/model.safetensors"))
    assert got.keys() == want.keys() and [k for k in want if not torch.equal(got[k], want[k])] == []
    ref = fleet.job(reference).results
    assert job.results["perplexity"] == ref["perplexity"] and job.results["sparsity"] == ref["sparsity"]
    assert [r["rel_error"] for r in job.results["layers"]] == [r["rel_error"] for r in ref["layers"]]
    assert ref["resume"] is None

    # The checkpoint is gone once the job succeeded; the artifacts are all that is left.
    assert fleet.storage().list(f"jobs/{job_id}/checkpoint") == []
    print(f"killed after layer {head['index'] + 1} of {LAYERS}; resumed at layer {resumed_at + 1}")
