"""The layer walk (``LayerWalk``): per decoder layer, (induction,) the statistics of every linear
from one pass over the layer's calibration batches, then every linear pruned from them, (then
recovery); the walker runs the pruned layer for the next layer's inputs."""

from __future__ import annotations

import time
from typing import Any

from torch import Tensor, nn

from spruce.core import report as rep
from spruce.core.arch import layer_linears
from spruce.core.passes import collect_paired_stats, collect_stats
from spruce.core.prune_step import LayerPruning
from spruce.core.pruners import PruneResult, mlp_row_weights
from spruce.core.report import LayerRecord
from spruce.core.sparsity import LayerTarget
from spruce.core.stats import InputStats
from spruce.core.walker import LayerBatch, run_layer


class LayerWalk(LayerPruning):
    """Each layer pruned from statistics of its dense self on the pruned model's inputs."""

    def visit(self, i: int, layer: nn.Module, batches: list[LayerBatch]) -> list[Tensor] | None:
        spec, arch, device = self.spec, self.arch, self.device
        target, record = self.start(i)
        col_weights: dict[str, Tensor] = {}
        pruned: dict[str, PruneResult] = {}
        measured: list[Tensor] | None = None  # the dense pass, where induction shared it
        # Where induction's scales are skipped (``induction_skipped``), the N:M channel permutation
        # below still applies: no pruner is invariant to it (docs/induction.md, "Where the scales are skipped").
        if record.induction_skipped is None and spec.induction.enabled:
            col_weights, measured = self._induce(layer, batches, target, record)
        if self.stream.recovery_advances:
            started = time.perf_counter()
            self.stream.advance(layer, batches, device)
            record.timings.add_induction(time.perf_counter() - started)
        start = time.perf_counter()
        sens = self.sensitivity_wanted(target)
        stats: dict[str, InputStats] = {}
        if spec.fits_dense_model:
            stats, outputs, self.stream.hidden = collect_paired_stats(
                layer, arch, batches, self.stream.hidden, device=device, sensitivity=sens,
                hessian_every=spec.hessian_every,
            )  # fmt: skip
        elif self.needs_stats:
            stats, outputs = collect_stats(
                layer, arch, batches, device=device, want_hessian=spec.wants_hessian,
                sensitivity=sens, hessian_every=spec.hessian_every,
            )  # fmt: skip
        elif measured is not None:  # (run before induction)
            outputs = measured
        else:  # magnitude reads no data: this dense pass only measures the layer's error
            outputs = run_layer(layer, batches, device=device)
            record.timings.add_measure(time.perf_counter() - start)
        if (
            spec.induction.enabled
            and spec.induction.permute
            and target.is_nm
            and record.induction_skipped is not None
        ):
            # (where the scales train, induce_layer permuted the layer before training)
            pruned = self._permute(layer, target, stats, col_weights, record)
        w_out = layer_linears(layer, arch)[arch.mlp_out].weight  # the dense mlp_out, before it is pruned
        row_weights = {name: mlp_row_weights(w_out, s) for name, s in (sens or {}).items()}
        record.linears = self.prune_linears(layer, target, i, stats, col_weights, pruned, row_weights)
        if spec.recovers:
            fits_model = spec.recovery_fits_model
            targets = list(self.stream.hidden) if fits_model else outputs
            self.recover(layer, batches, targets, "model" if fits_model else "layer", record)
        self.finish(record, outputs)
        return None  # (the walker runs the pruned, recovered layer for its outputs)

    def _induce(
        self, layer: nn.Module, batches: list[LayerBatch], target: LayerTarget, record: LayerRecord
    ) -> tuple[dict[str, Tensor], list[Tensor] | None]:
        """Induction's scales on the dense layer (folded into it). Returns the importances the
        pruner applies, and the dense layer's outputs where its pass was shared with induction."""
        from spruce.core.induction import (  # torch-heavy training code, only when asked for
            induce_layer,
            recorder_for,
        )

        spec, arch, device = self.spec, self.arch, self.device
        reference, shared, measured = None, None, None
        if spec.induction_fits_model:  # the dense model's inputs of this layer, batch for batch
            reference = self.stream.inputs(batches)
        elif not self.needs_stats:
            # Magnitude reads no statistics: the dense pass that measures the layer's error runs
            # first, through induction's statistics hooks, and induction runs none of its own.
            started = time.perf_counter()
            with recorder_for(layer, arch, spec.induction, spec.pruner) as recorder:
                measured = run_layer(layer, batches, device=device)
            record.timings.add_measure(time.perf_counter() - started - recorder.seconds)
            shared = (measured, recorder)  # (induce_layer counts the recorder's seconds)
        result = induce_layer(
            layer, arch, batches, device=device, target=target, pruner=spec.pruner, spec=spec.induction,
            generator=self.generator, dampening=spec.dampening, blocksize=spec.blocksize, order=spec.order,
            swap_rounds=spec.swaps, swap_shrink=spec.resolve().swap_shrink, reference=reference, dense=shared,
        )  # fmt: skip
        if result.reference_outputs is not None:  # the dense layer's, computed before the fold
            self.stream.hidden = result.reference_outputs
        record.induction = rep.induction_row(result)
        record.timings.induction = result.seconds
        return dict(result.col_weights), measured

    def _permute(
        self,
        layer: nn.Module,
        target: LayerTarget,
        stats: dict[str, InputStats],
        col_weights: dict[str, Tensor],
        record: LayerRecord,
    ) -> dict[str, PruneResult]:
        """Induction's N:M channel permutation where its scales are skipped: chosen from the
        statistics just collected, guarded per writer (``guarded_permutation``), folded into the
        layer and applied to those statistics, so no pass is repeated. Returns the chosen pruning
        of o and down, so they are not pruned a third time."""
        from spruce.core.induction.permute import (
            choose_permutations,
            fold_permutation_,
            guarded_permutation,
            permute_inputs_,
        )
        from spruce.core.induction.transform import plan_layer

        spec, arch = self.spec, self.arch
        start = time.perf_counter()
        plan = plan_layer(layer, arch)
        perm = choose_permutations(
            layer, plan, target, spec.pruner, stats, col_weights,
            dampening=spec.dampening, rounds=self.permute_rounds(), generator=self.generator,
        )  # fmt: skip
        chosen: dict[str, PruneResult] = {}
        chosen_seconds = 0.0
        for group, path in (("down", arch.mlp_out), ("o", arch.o)):
            p = getattr(perm, group)
            if p is None:
                continue
            W = layer_linears(layer, arch)[path].weight.data
            chosen[path], _, keep, spent = guarded_permutation(
                W, stats[path], p, target, spec, col_weights.get(path), perm.info[group]
            )
            chosen_seconds += spent
            if not keep:
                setattr(perm, group, None)
        fold_permutation_(layer, plan, perm)
        permute_inputs_(plan, perm, stats, col_weights)
        seconds = time.perf_counter() - start - chosen_seconds
        perm.info["seconds"] = round(seconds, 4)
        info: dict[str, Any] = perm.info
        record.permutation = info
        record.timings.add_induction(seconds)
        return chosen
