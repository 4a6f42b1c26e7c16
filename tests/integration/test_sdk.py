"""The Python SDK against the real stack (API, Postgres, Redis, Celery worker, S3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

import spruce
from tests.integration.conftest import TINY_SPEC, Stack

pytestmark = pytest.mark.integration


def test_submit_wait_download_and_page_through_jobs(stack: Stack, models: dict[str, Path], tmp_path: Path) -> None:
    with spruce.Client(stack.url, stack.keys["acme"]) as client:
        body = {**TINY_SPEC, "model": str(models["tiny"])}
        job = client.submit(body, idempotency_key="sdk-first")
        again = client.submit(body, idempotency_key="sdk-first")  # a retried POST
        assert again.id == job.id
        seen: list[float] = []
        done = client.wait(job.id, on_progress=lambda j: seen.append(j.progress), interval=0.2, timeout=300)
        assert done.status == "succeeded" and seen == sorted(seen) and seen[-1] == 1.0
        assert done.perplexity("pydoc") is not None
        files = client.download(job.id, tmp_path / "out", only="hf/")
        assert {p.name for p in files} >= {"config.json", "README.md"}
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "hf")
        assert model.config.model_type == "llama"
        ids = [j.id for j in client.jobs(page_size=1)]  # one job a page: pages are followed
        assert job.id in ids and len(ids) == len(set(ids))


def test_errors_name_the_field(stack: Stack) -> None:
    with spruce.Client(stack.url, stack.keys["acme"]) as client:
        with pytest.raises(spruce.ApiError) as err:
            client.submit({**TINY_SPEC, "model": "smollm2-135m", "sparsity": 1.5})
        assert err.value.status == 422 and err.value.param == "sparsity"
        with pytest.raises(spruce.ApiError) as missing:
            client.get("job_does_not_exist")
        assert missing.value.status == 404
