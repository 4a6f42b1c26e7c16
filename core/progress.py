"""Progress reports from the engine to its caller (the worker or the CLI)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Stages in the order a run passes through them, with their share of the whole run's progress.
# The shares are rough wall-time weights on a CPU run of the benchmark model.
STAGES: tuple[tuple[str, float], ...] = (
    ("load", 0.05),
    ("calibration", 0.02),
    ("evaluate_dense", 0.13),
    ("allocate", 0.05),
    ("prune", 0.55),
    ("evaluate_sparse", 0.13),
    ("export", 0.07),
)


@dataclass(frozen=True)
class Progress:
    stage: str
    fraction: float  # of the whole run, 0..1, never decreasing
    layer: int | None = None  # 1-based layer being worked on in this stage
    layers: int | None = None
    message: str = ""


ProgressFn = Callable[[Progress], None]
StopFn = Callable[[], bool]


def overall_fraction(stage: str, within: float) -> float:
    """Map progress ``within`` a stage (0..1) to the fraction of the whole run."""
    done = 0.0
    for name, share in STAGES:
        if name == stage:
            return min(1.0, done + share * max(0.0, min(1.0, within)))
        done += share
    raise ValueError(f"unknown stage {stage!r}")
