"""Presets: named tables of the experimental options, each defined once here.

``default`` is every option at its declared default (core.spec.settings and compression): the
engine's measured choices (docs/pruners.md, docs/induction.md). ``reference`` runs the papers'
algorithms as llm-compressor runs them, for comparison (benchmarks/quality.py --preset reference):

- magnitude: the lowest |W| of each whole layer (one threshold per matrix, ties at it dropped);
- Wanda: |W| ||X_j|| per row, no swap rounds;
- SparseGPT: fitted to the dense layer on the pruned model's inputs, columns in stored order,
  each block's lowest scores pruned, no row weights, blocks of 128, dampening 0.01, the inverse
  Hessian factored through cholesky_inverse as llm-compressor does;
- every layer's statistics taken from the dense layer, then the next layer's inputs from the
  pruned one (llm-compressor's sequential pipeline), forwards in the model's dtype with eager
  attention (llm-compressor forces it while it calibrates), one
  calibration sequence per forward as llm-compressor runs them (batched forwards round
  differently, which moves a row near collapse, Wanda 70%, by more than 2%: docs/pruners.md);
- Sparsity Induction as the paper describes it: scales (and shifts) from 1, one epoch against
  the dense layer's outputs, no per-linear importance, no N:M permutation, no recovery.

An option a job sets under ``experimental`` overrides its preset's value.
"""

from __future__ import annotations

from typing import Any, Literal

Preset = Literal["default", "reference"]

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "reference": {
        "swap_rounds": 0,
        "fit_to": "layer",
        "order": "natural",
        "row_weight": "none",
        "magnitude_scope": "layer",
        "selection": "block",
        "hinv": "textbook",
        "blocksize": 128,
        "dampening": 0.01,
        "sequential": "layer",
        "compute_dtype": "model",
        "attention": "eager",
        "batch_size": 1,
        "induction.epochs": 1,
        "induction.init": "one",
        "induction.targets": "layer",
        "induction.per_linear": False,
        "induction.permute": False,
        "induction.recover_epochs": 0,
        "induction.samples": 0,
    },
}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)
