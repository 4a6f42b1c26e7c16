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
    within: float | None = None  # progress within ``stage``, 0..1 (None: unknown)


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
            self._on_progress(
                Progress(stage=stage, fraction=fraction, layer=layer, layers=layers, within=within)
            )

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


# The engine's stages after the layer walk; an estimate is only given once all of them are known.
_AFTER_PRUNE = ("evaluate_sparse", "export")


class Eta:
    """Seconds left in a run, from what this attempt measured; None until it has the data.

    Fed every ``Progress`` with the time it arrived (``update``). No estimate is given before the
    walk has pruned its first decoder layer: the stages before it (load, calibration, the dense
    evaluation) say little about the layer walk, which is most of a run. From then on:

    - the walk's remaining layers take the mean time of its layers so far (the first one includes
      capturing the calibration inputs; induction, statistics and pruning are all per layer);
    - the sparse evaluation takes as long as the dense one took in this attempt (the same texts
      through the same layers), blended with its own pace once it has started; with no dense
      evaluation measured (a resumed run, ``evaluation.dense`` off), the ``STAGES`` shares
      relative to the walk's estimate;
    - the export takes twice the load (it writes the model twice: hf/ and compact/).
    """

    def __init__(self) -> None:
        self._stage: str | None = None
        self._start: dict[str, float] = {}  # stage -> when this attempt entered it
        self._took: dict[str, float] = {}  # finished stage -> seconds
        self._layers_done = 0  # decoder layers the walk finished in this attempt
        self._last_layer: tuple[int, int, float] | None = None  # (layer, layers, when)
        self._within = 0.0

    def update(self, p: Progress, now: float) -> int | None:
        if p.stage != self._stage:
            if self._stage is not None and self._stage in self._start:
                self._took[self._stage] = now - self._start[self._stage]
            self._stage = p.stage
            self._start.setdefault(p.stage, now)
            self._within = 0.0
        within = p.within
        if within is None and p.layer is not None and p.layers:
            within = p.layer / p.layers
        if within is not None:
            self._within = max(self._within, min(1.0, within))
        if p.stage == "prune" and p.layer is not None and p.layers:
            if self._last_layer is None or p.layer != self._last_layer[0]:
                self._layers_done += 1
            self._last_layer = (p.layer, p.layers, now)
        left = self._left(now)
        return None if left is None else max(0, round(left))

    def _left(self, now: float) -> float | None:
        walk = self._walk_seconds()
        if walk is None:
            return None  # no layer pruned yet (or the run has no walk): nothing to go on
        stage = self._stage
        if stage == "prune":
            assert self._last_layer is not None
            layer, layers, at = self._last_layer
            per_layer = walk / layers
            prune_left = max(0.0, (layers - layer) * per_layer - (now - at))
            return prune_left + self._stage_total("evaluate_sparse", walk) + self._stage_total("export", walk)
        if stage not in _AFTER_PRUNE:
            return None
        left = 0.0
        for name in _AFTER_PRUNE[_AFTER_PRUNE.index(stage) :]:
            total = self._stage_total(name, walk)
            if name == stage:
                elapsed, w = now - self._start[name], self._within
                # The prior's weight falls as the stage's own pace (elapsed / w) becomes known; what
                # the prior has left stays a floor (work after the last report: lm-eval tasks).
                paced = (1 - w) * ((1 - w) * total + elapsed)
                total = max(paced, total - elapsed)
            left += total
        return left

    def _walk_seconds(self) -> float | None:
        """The whole layer walk's duration: measured, or projected from its layers so far."""
        if self._last_layer is None or self._layers_done == 0:
            return None
        if "prune" in self._took:
            return self._took["prune"] * self._last_layer[1] / max(self._layers_done, 1)
        _, layers, at = self._last_layer
        return (at - self._start["prune"]) / self._layers_done * layers

    def _stage_total(self, name: str, walk: float) -> float:
        if name == "evaluate_sparse" and "evaluate_dense" in self._took:
            return self._took["evaluate_dense"]
        if name == "export" and "load" in self._took:
            return 2 * self._took["load"]
        shares = dict(STAGES)
        return walk * shares[name] / shares["prune"]
