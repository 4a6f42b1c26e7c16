"""Progress reports from the engine to its caller (the worker or the CLI)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from spruce.core.errors import Cancelled

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


class Run:
    """Progress, stage timings and cancellation of one ``compress`` call."""

    def __init__(self, on_progress: ProgressFn | None, should_stop: StopFn | None) -> None:
        self._on_progress = on_progress
        self._should_stop = should_stop
        self._last = 0.0
        self.timings: dict[str, float] = {}

    def progress(
        self, stage: str, within: float, layer: int | None = None, layers: int | None = None
    ) -> None:
        fraction = max(self._last, overall_fraction(stage, within))
        self._last = fraction
        if self._on_progress is not None:
            self._on_progress(Progress(stage=stage, fraction=fraction, layer=layer, layers=layers))

    def check_stop(self, where: str) -> None:
        if self._should_stop is not None and self._should_stop():
            raise Cancelled(f"cancelled {where}")

    def stop_fn(self) -> StopFn | None:
        return self._should_stop

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.check_stop(f"before stage {name!r}")
        self.progress(name, 0.0)
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        self.progress(name, 1.0)
