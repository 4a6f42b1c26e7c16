"""The SDK's sweeps on the real stack: ``spruce.Client.sweep`` then ``wait_sweep``."""

from __future__ import annotations

from pathlib import Path

import pytest

import spruce
from tests.integration.conftest import TINY_SPEC, Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_the_sdk_sweeps_and_waits(stack: Stack, models: dict[str, Path]) -> None:
    with spruce.Client(stack.url, stack.keys["acme"]) as client:
        spec = {**TINY_SPEC, "model": str(models["tiny"])}
        sweep = client.sweep(spec, ["0.4", 0.6], pruners=["wanda", "magnitude"], idempotency_key="sdk-sweep")
        assert client.sweep(spec, ["0.4", 0.6], pruners=["wanda", "magnitude"], idempotency_key="sdk-sweep").id == sweep.id
        seen: list[int] = []
        done = client.wait_sweep(sweep.id, on_progress=lambda s: seen.append(s.raw["progress"]["done"]), interval=0.5)
        assert done.status == "succeeded" and len(done.jobs) == 4 and seen == sorted(seen) and seen[-1] == 4
        assert [(r["target"], r["pruner"]) for r in done.table] == [
            ("0.4", "wanda"), ("0.4", "magnitude"), (0.6, "wanda"), (0.6, "magnitude")
        ]  # fmt: skip
        assert all(r["status"] == "succeeded" and r["sparsity"] > 0.35 for r in done.table)
        assert done.pareto and all(p in done.table for p in done.pareto)
        assert {client.get(j).raw["sweep_id"] for j in done.jobs} == {sweep.id}
