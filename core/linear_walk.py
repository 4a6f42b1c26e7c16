"""The linear walk (``LinearWalk``): every calibration token in one batch, and each layer's
linears pruned group by group inside its forward (``core.passes.prune_in_forward``), so each
group is fitted on what the already pruned groups before it produce."""

from __future__ import annotations

import functools
import time
from typing import Any

from torch import Tensor, nn

from spruce.core.arch import layer_linears
from spruce.core.passes import prune_in_forward
from spruce.core.prune_step import LayerPruning
from spruce.core.pruners import mlp_row_weights
from spruce.core.report import LayerRecord
from spruce.core.sparsity import LayerTarget
from spruce.core.stats import InputStats, OutputSensitivity
from spruce.core.walker import LayerBatch, run_layer


class LinearWalk(LayerPruning):
    """Each layer pruned in turn inside one forward. Where SparseGPT fits the dense model, a
    layer's ``rel_error`` is against the dense model's output of the layer (its ``error_vs``),
    which this walk has, instead of the dense layer's on the pruned inputs, which it does not
    compute."""

    def visit(self, i: int, layer: nn.Module, batches: list[LayerBatch]) -> list[Tensor]:
        spec, arch, device = self.spec, self.arch, self.device
        target, record = self.start(i)
        (batch,) = batches
        sens = self.sensitivity_wanted(target)
        done: dict[str, dict[str, Any]] = {}
        plan = None
        if spec.induction.enabled and spec.induction.permute and target.is_nm:
            from spruce.core.induction.transform import (
                plan_layer,  # torch-heavy induction code, only when asked for
            )

            plan = plan_layer(layer, arch)
        prune = functools.partial(self._prune_group, layer, target, record, plan, sens, done)
        paired = self.stream.active
        passes: dict[str, float] = {}
        out, ref_out = prune_in_forward(
            layer, arch, batch, self.stream.hidden[0] if paired else batch.hidden, device=device,
            prune=prune, fit_reference=spec.fits_dense_model,
            want_hessian=spec.wants_hessian, sensitivity=sens, timings=passes,
            hessian_every=spec.hessian_every,
        )  # fmt: skip
        if not paired and sens is None:
            # the dense pass then only yields the dense layer's output, for the layer's error
            record.timings.add_measure(passes["reference"])
        if paired:
            self.stream.hidden = [ref_out]
            record.error_vs = "dense model"
        record.linears = {name: done[name] for name in arch.linears}
        # ref_out: the dense model's output of the layer where the walk is paired, else the dense
        # layer's on the pruned inputs
        if spec.recovers and self.recover(layer, batches, [ref_out], "model" if paired else "layer", record):
            started = time.perf_counter()
            (out,) = run_layer(layer, batches, device=device)  # the recovered layer's output
            record.timings.add_induction(time.perf_counter() - started)
        self.finish(record, [ref_out])
        return [out]

    def _prune_group(
        self,
        layer: nn.Module,
        target: LayerTarget,
        record: LayerRecord,
        plan: Any,
        sens: dict[str, OutputSensitivity] | None,
        done: dict[str, dict[str, Any]],
        group: tuple[str, ...],
        stats: InputStats,
    ) -> Tensor | None:
        """``prune_in_forward``'s ``prune``: the group pruned in place from the statistics its
        forward brought (its report entries into ``done``); the writers o and down permuted first
        where induction permutes (``plan``). Returns the permutation folded, or None."""
        arch = self.arch
        if plan is not None and group[0] in (arch.o, arch.mlp_out):
            entries, p, info, seconds = self._permute_writer(
                layer, plan, group[0], stats, target, record.index
            )
            done.update(entries)
            perms = record.permutation if record.permutation is not None else {}
            record.permutation = perms
            perms["down" if group[0] == arch.mlp_out else "o"] = info
            perms["seconds"] = round(perms.get("seconds", 0.0) + seconds, 4)
            record.timings.add_induction(seconds)
            return p
        row_weights = {}
        if sens is not None and group == arch.mlp_in:  # filled by the reference pass; down still dense
            w_out = layer_linears(layer, arch)[arch.mlp_out].weight
            row_weights = {name: mlp_row_weights(w_out, s) for name, s in sens.items()}
        stats_of = dict.fromkeys(group, stats)
        done.update(
            self.prune_linears(layer, target, record.index, stats_of, None, None, row_weights, only=group)
        )
        return None

    def _permute_writer(
        self, layer: nn.Module, plan: Any, path: str, stats: InputStats, target: LayerTarget, index: int
    ) -> tuple[dict[str, dict[str, Any]], Tensor | None, dict[str, Any], float]:
        """The N:M channel permutation of one writer (o or down) inside the forward that prunes
        the layer in turn: chosen from the statistics the forward brought, guarded
        (``guarded_permutation``) and folded into the layer where kept. Returns (the writer's
        report entry, the permutation kept or None, the permutation's report, the seconds it
        cost beyond the pruning the step does anyway)."""
        from spruce.core.induction.permute import (
            LayerPermutation,
            fold_permutation_,
            guarded_permutation,
            writer_permutation,
        )

        spec, arch = self.spec, self.arch
        start = time.perf_counter()
        group = "down" if path == arch.mlp_out else "o"
        p, info = writer_permutation(
            layer, plan, target, spec.pruner, group, stats, None,
            dampening=spec.dampening, rounds=self.permute_rounds(), generator=self.generator,
        )  # fmt: skip
        W = layer_linears(layer, arch)[path].weight.data
        result, used_stats, keep, spent = guarded_permutation(W, stats, p, target, spec, None, info)
        if keep:
            fold_permutation_(
                layer, plan, LayerPermutation(p if group == "down" else None, p if group == "o" else None)
            )
        entries = self.prune_linears(
            layer, target, index, {path: used_stats}, None, {path: result}, only=(path,)
        )
        seconds = time.perf_counter() - start - spent
        return entries, (p if keep else None), info, seconds
