"""Sparsity Induction (arXiv 2602.21652): learned, exactly foldable per-channel transforms
trained block by block against the pruned block, run before every pruner. See docs/induction.md."""

from spruce.core.induction.train import InductionResult, col_weights_for, induce_layer, recorder_for
from spruce.core.induction.transform import LayerPlan, Transform, fold_, fold_params, plan_layer

__all__ = [
    "InductionResult",
    "LayerPlan",
    "Transform",
    "col_weights_for",
    "fold_",
    "fold_params",
    "induce_layer",
    "plan_layer",
    "recorder_for",
]
