"""The dense model's own activations, walking alongside the pruned model's (``DenseStream``)."""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from spruce.core.precision import Device
from spruce.core.spec import CompressionSpec
from spruce.core.walker import LayerBatch, run_layer


class DenseStream:
    """Per calibration batch, the dense model's input of the layer being walked.

    It walks where something fits or trains against the dense model's outputs rather than the
    dense layer's: SparseGPT's fit (``fits_dense_model``), induction's scales
    (``induction_fits_model``) or its recovery (``recovery_fits_model``). Who moves it on by one
    layer: SparseGPT's paired statistics where it fits the dense model, else induction's training
    against it (the two never meet: induction's scales are skipped where the pruner fits the
    dense model), else the walk itself, for the recovery alone (``recovery_advances``).
    """

    def __init__(self, spec: CompressionSpec) -> None:
        self.active = spec.fits_dense_model or spec.induction_fits_model or spec.recovery_fits_model
        self.recovery_advances = self.active and not (spec.fits_dense_model or spec.induction_fits_model)
        self.hidden: list[Tensor] = []

    def inputs(self, batches: list[LayerBatch]) -> list[LayerBatch]:
        """``batches`` with the dense model's inputs in place of the pruned model's."""
        return [replace(b, hidden=h) for b, h in zip(batches, self.hidden, strict=True)]

    def advance(self, layer: nn.Module, batches: list[LayerBatch], device: Device) -> None:
        """Run the (still dense) ``layer`` on the stream: the dense model's next inputs."""
        self.hidden = run_layer(layer, self.inputs(batches), device=device)
