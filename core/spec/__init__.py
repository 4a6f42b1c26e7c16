"""The compression spec: what to prune, how, on which text.

One declaration (the dataclasses' field metadata, core.spec.fields) for the CLI, the service, the
dashboard and the report. ``CompressionSpec.from_dict`` accepts the job body of the HTTP API
(``{"model", "sparsity", "method", "calibration", "evaluation", "options", "experimental"}``) and
raises ``SpecError`` whose ``param`` is the dotted path of the bad field; ``resolve()`` gives the
plan of concrete values; ``PRESETS`` and ``PRUNER_TRAITS`` are the tables behind both.
"""

from spruce.core.spec.compression import (
    ALLOCATIONS,
    COMPUTE_DTYPES,
    DTYPES,
    FIT_TARGETS,
    IN_FORWARD_BYTES,
    ROW_WEIGHTS,
    SEQUENTIALS,
    SWEEP_ORDERS,
    Allocation,
    CompressionSpec,
    RowWeight,
    Sequential,
    SweepOrder,
)
from spruce.core.spec.plan import AUTO_FIT_MIN_RATIO, InductionPlan, Plan
from spruce.core.spec.presets import PRESET_NAMES, PRESETS, Preset
from spruce.core.spec.settings import SEED_MAX, EvalSpec, InductionSpec, TextSpec
from spruce.core.spec.sparsity import Sparsity
from spruce.core.spec.traits import (
    FIT_SHARES,
    PRUNER_TRAITS,
    PRUNERS,
    Pruner,
    Score,
    Traits,
    traits,
)

__all__ = [
    "ALLOCATIONS",
    "AUTO_FIT_MIN_RATIO",
    "COMPUTE_DTYPES",
    "DTYPES",
    "FIT_SHARES",
    "FIT_TARGETS",
    "IN_FORWARD_BYTES",
    "PRESETS",
    "PRESET_NAMES",
    "PRUNERS",
    "PRUNER_TRAITS",
    "ROW_WEIGHTS",
    "SEED_MAX",
    "SEQUENTIALS",
    "SWEEP_ORDERS",
    "Allocation",
    "CompressionSpec",
    "EvalSpec",
    "InductionPlan",
    "InductionSpec",
    "Plan",
    "Preset",
    "Pruner",
    "RowWeight",
    "Score",
    "Sequential",
    "Sparsity",
    "SweepOrder",
    "TextSpec",
    "Traits",
    "traits",
]
