"""What the two walks of the pruning stage share (``LayerPruning``): each layer's record, the
pruning of its linears, induction's recovery, and the measurements once its outputs exist.

The walks themselves: ``core.layer_walk.LayerWalk`` (statistics of the whole layer, then every
linear pruned from them) and ``core.linear_walk.LinearWalk`` (the linears pruned in turn inside
one forward); ``core.compress`` chooses between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from spruce.core import report as rep
from spruce.core.arch import ArchSpec, layer_linears
from spruce.core.dense_stream import DenseStream
from spruce.core.pruners import PruneResult, prune_weight, reconstruction_error
from spruce.core.report import LayerRecord
from spruce.core.sparsity import LayerTarget, sparsity_of
from spruce.core.spec import CompressionSpec, traits
from spruce.core.stats import InputStats, OutputSensitivity
from spruce.core.walker import LayerBatch

# Called after layer i with (i, the layer's outputs and the dense stream, rows so far, retries).
SaveFn = Callable[[int, list[Tensor], list[dict[str, Any]], list[dict[str, Any]]], None]


class LayerPruning:
    """State of one pruning walk: the records and factorisation retries so far, the dense
    outputs each layer's error is measured against, and the dense stream."""

    def __init__(
        self,
        arch: ArchSpec,
        spec: CompressionSpec,
        *,
        device: torch.device,
        generator: torch.Generator,
        ratios: list[float],
        stream: DenseStream,
        prior: dict[str, Any],
        save: SaveFn | None = None,
    ) -> None:
        """``prior``: a resumed run's checkpoint meta (its rows and retries), else empty."""
        self.arch, self.spec, self.device, self.generator = arch, spec, device, generator
        self.ratios, self.stream, self.save = ratios, stream, save
        self.records = [LayerRecord.from_dict(r) for r in prior.get("rows", [])]
        self.fact: list[dict[str, Any]] = list(prior.get("fact", []))
        self.needs_stats = traits(spec.pruner).reads_data
        self._dense_out: list[list[Tensor]] = []  # the layer's dense outputs, to measure its error
        self._visit_end = 0.0

    def visit(self, i: int, layer: nn.Module, batches: list[LayerBatch]) -> list[Tensor] | None:
        raise NotImplementedError

    def start(self, i: int) -> tuple[LayerTarget, LayerRecord]:
        spec = self.spec
        target = LayerTarget.from_sparsity(spec.sparsity, None if spec.sparsity.is_nm else self.ratios[i])
        record = LayerRecord(index=i, target=round(target.ratio, 6))
        record.induction_skipped = spec.induction_scales_skipped
        return target, record

    def finish(self, record: LayerRecord, dense_outputs: list[Tensor]) -> None:
        self._dense_out.append(dense_outputs)
        self._visit_end = time.perf_counter()
        self.records.append(record)

    def on_outputs(self, i: int, outputs: list[Tensor]) -> None:
        """The walker's hook once layer i's (pruned) outputs exist: its error and sparsity, and
        the checkpoint."""
        record = self.records[i]
        if not self.needs_stats:  # magnitude: propagating is only needed to measure the next layer's error
            record.timings.add_measure(time.perf_counter() - self._visit_end)
        record.rel_error = relative_error(self._dense_out.pop(), outputs)
        record.sparsity = layer_sparsity(record.linears)
        if self.save is not None:
            rows = [r.to_dict() for r in self.records]
            self.save(i, [*outputs, *self.stream.hidden], rows, self.fact)

    def sensitivity_wanted(self, target: LayerTarget) -> dict[str, OutputSensitivity] | None:
        """An empty dict to fill when SparseGPT's unstructured selection weighs rows against each
        other (method.row_weight), else None."""
        spec = self.spec
        if spec.resolve().row_weight == "output" and not target.is_nm:
            return {}
        return None

    def prune_linears(
        self,
        layer: nn.Module,
        target: LayerTarget,
        index: int,
        stats: dict[str, InputStats],
        col_weights: dict[str, Tensor] | None = None,
        pruned: dict[str, PruneResult] | None = None,
        row_weights: dict[str, Tensor] | None = None,
        *,
        only: tuple[str, ...] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Prune every linear of the layer (or those named in ``only``) in place (``pruned``:
        results already computed, by path; ``row_weights``: SparseGPT's row weights, by path).
        Returns each linear's report entry."""
        spec = self.spec
        out: dict[str, dict[str, Any]] = {}
        for name, lin in layer_linears(layer, self.arch).items():
            if only is not None and name not in only:
                continue
            W = lin.weight.data  # [out, in]
            st = stats.get(name)
            result = (pruned or {}).get(name) or prune_weight(
                W, spec.pruner, target, st, blocksize=spec.blocksize, dampening=spec.dampening,
                col_weight=(col_weights or {}).get(name), order=spec.order,
                row_weight=(row_weights or {}).get(name), swap_rounds=spec.swaps, swap_shrink=spec.resolve().swap_shrink,
                fit_share=spec.fit_weight,
                magnitude_scope=spec.magnitude_scope, selection=spec.selection, hinv=spec.hinv,
            )  # fmt: skip
            entry: dict[str, Any] = {"sparsity": round(sparsity_of(result.W), 6), "params": W.numel()}
            if result.swaps is not None:
                entry["swaps"] = result.swaps.swaps
                entry["swap_gain"] = round(result.swaps.gain, 6)
            if st is not None and st.H is not None:
                entry["rel_error"] = round(reconstruction_error(W, result.W, st.H), 6)
            if result.retries:
                self.fact.append(
                    {"layer": index, "linear": name, "retries": result.retries, "damp": result.damp}
                )
            W.copy_(result.W)
            out[name] = entry
        return out

    def recover(
        self,
        layer: nn.Module,
        batches: list[LayerBatch],
        targets: list[Tensor],
        against: str,
        record: LayerRecord,
    ) -> bool:
        """Induction's recovery scales on the pruned layer (``core.induction.recover``), recorded
        and timed as induction; True where the trained scales were folded into the layer."""
        from spruce.core.induction.recover import (
            recover_layer,  # torch-heavy training code, only when asked for
        )

        spec = self.spec
        result = recover_layer(
            layer, self.arch, batches, targets, device=self.device,
            epochs=spec.induction.recover_epochs_for(spec.pruner), lr=spec.induction.recover_lr,
            weights_lr=spec.induction.recover_weights_lr, samples=spec.induction.samples_for(spec.pruner),
            generator=self.generator,
        )  # fmt: skip
        result.info["targets"] = against
        record.recovery = rep.recovery_row(result)
        record.timings.add_induction(result.seconds)
        return result.chosen == "trained"

    def permute_rounds(self) -> int:
        """The N:M permutation's search rounds where the walk chooses it (the scales do not train)."""
        spec = self.spec
        return spec.induction.rounds_for(spec.pruner, trains=spec.induction_epochs > 0)


def relative_error(dense: list[Tensor], sparse: list[Tensor]) -> float:
    """||Y_dense - Y_sparse|| / ||Y_dense|| of one layer's outputs, over all calibration batches."""
    num = sum(float((d.float() - s.float()).pow(2).sum()) for d, s in zip(dense, sparse, strict=True))
    den = sum(float(d.float().pow(2).sum()) for d in dense)
    return round((num / max(den, 1e-30)) ** 0.5, 6)


def layer_sparsity(linears: dict[str, dict[str, Any]]) -> float:
    zeros = sum(v["sparsity"] * v["params"] for v in linears.values())
    total = sum(v["params"] for v in linears.values())
    return round(zeros / max(total, 1), 6)
