"""benchmarks/scaling.py's harness on a tiny shape: every stage runs through the engine's current
functions (a core change that breaks a stage fails here, not in the next benchmark run)."""

from __future__ import annotations

import argparse
import math

import pytest

from benchmarks.scaling import STAGES, exponents
from benchmarks.scaling_stages import run_shape

pytestmark = pytest.mark.unit


def test_every_stage_runs_on_a_tiny_shape() -> None:
    args = argparse.Namespace(samples=2, seq_len=16, batch=2, sparsity=0.5, seed=0, device="cpu", save=None)
    out = run_shape({"hidden": 64, "mlp": 128, "heads": 4, "kv": 2}, list(STAGES), args)
    assert list(out["stages"]) == list(STAGES)
    for stage, row in out["stages"].items():
        assert row["seconds"] > 0 and row["peak_mib"] > 0, stage
        assert row["note"], stage
    assert "one token in 2" in out["stages"]["wanda_stats"]["note"]


def test_exponent_is_the_log_log_slope() -> None:
    shapes = {
        name: {"hidden": h, "stages": {"sparsegpt": {"seconds": 0.5 * h**3}, "wanda": {"seconds": 2.0 * h**2}}}
        for name, h in (("a", 100), ("b", 400), ("c", 1600))
    }
    exps = exponents(shapes, ["sparsegpt", "wanda", "swaps"])
    assert math.isclose(exps["sparsegpt"] or 0, 3.0) and math.isclose(exps["wanda"] or 0, 2.0)
    assert exps["swaps"] is None  # not measured on any shape
