"""The trainer of one layer's transform (``Trainer``): the pruned block's loss in the original
coordinates, the regulariser, the training passes and the guarded final choice (see train.py)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from spruce.core.induction.batches import Minibatch, check_subset, forward_with, held_out_loss
from spruce.core.induction.masks import keep_mask, log_base_scores, obs_chain, sparsegpt_weights
from spruce.core.induction.transform import (
    LayerPlan,
    Transform,
    fold_params,
    importance,
    input_scales,
    input_shifts,
    normalised,
    qk_row_scales,
)
from spruce.core.precision import layer_precision
from spruce.core.sparsegpt import HinvFactor, inverse_hessian_factor, sparsegpt
from spruce.core.sparsity import LayerTarget
from spruce.core.spec import InductionSpec, SweepOrder, traits
from spruce.core.stats import InputStats
from spruce.core.swaps import swap_refine

_POWER_ITERS_INIT = 20  # power iterations for the reference spectral norms (then 1 per step, warm-started)
MARGIN = 0.005  # relative loss gain a transform needs on held-out data to replace plain pruning
SPARSEGPT_HOPS = 3  # terms of the series that stands in for SparseGPT's update during training


class Trainer:
    def __init__(
        self,
        layer: nn.Module,
        plan: LayerPlan,
        params: dict[str, torch.Tensor],
        stats: dict[str, InputStats],
        target: LayerTarget,
        pruner: str,
        spec: InductionSpec,
        dampening: float,
        blocksize: int,
        device: torch.device,
        order: SweepOrder = "natural",
        swap_rounds: int = 0,
        swap_shrink: float = 0.0,
    ) -> None:
        self.layer, self.plan, self.params, self.stats = layer, plan, params, stats
        self.swap_rounds, self.swap_shrink = swap_rounds, swap_shrink
        self.device = device
        self.target, self.pruner, self.spec, self.dampening = target, pruner, spec, dampening
        self.traits = traits(pruner)
        self.blocksize = blocksize
        self.order = order
        self.tau = float(spec.temperature)
        # SparseGPT selects per block of columns (same share of each row in each block).
        self.segment = blocksize if self.traits.selects_per_block and not target.is_nm else None
        self.linears = plan.arch.linears
        self._fixed_cols: dict[str, torch.Tensor | None] = {}
        self._chain: dict[str, torch.Tensor] = {}  # SparseGPT: the update chain A per input group
        self._L0: dict[tuple[str, str], torch.Tensor] = {}
        self._power: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._sigma0: dict[str, float] = {}

    # -- scores and pruned parameters -------------------------------------------------------------

    def refresh(self, T: Transform) -> None:
        """Recompute the per-channel score factors that do not change within an epoch: SparseGPT's
        1/[Hinv]_jj of the shifted H (a Cholesky per group; only the shifts change it), and the
        chain of its update."""
        if not self.traits.needs_hessian:
            return
        shifts = input_shifts(self.plan, T)
        if self._fixed_cols and all(d is None for d in shifts.values()):
            return  # without shifts H never changes
        for group, st in self.stats.items():
            H = st.centred_H(shifts[group]) * (2.0 / st.n)
            f = inverse_hessian_factor(H, dampening=self.dampening)
            self._fixed_cols[group] = 1.0 / f.Hinv.diagonal()  # [in]
            self._chain[group] = obs_chain(f.Hinv)  # [in, in]
        self._L0.clear()

    def base_col(self, group: str, d: torch.Tensor | None) -> torch.Tensor | None:
        """[in] the pruner's per-channel factor of its score in |w| units (``Traits.score``), or
        None (data-free)."""
        score = self.traits.score
        if score == "weight":
            return None
        if score == "norm":
            return self.stats[group].centred_sq(d).sqrt()  # ||X_j - d_j||
        return self._fixed_cols[group]  # "obs": 1/[Hinv]_jj (``refresh``)

    def _log_scores(self, path: str, group: str, d: torch.Tensor | None) -> torch.Tensor:
        """[out, in] log of the pruner's score before the scale; cached unless a shift moves it."""
        if d is not None and self.traits.score == "norm":  # the shift moves ||X_j - d_j||
            return log_base_scores(self.params[f"{path}.weight"], self.base_col(group, d))
        key = (path, self.pruner)
        if key not in self._L0:
            self._L0[key] = log_base_scores(self.params[f"{path}.weight"], self.base_col(group, d))
        return self._L0[key]

    def pruned_params(
        self, T: Transform, *, mode: str | None = None, swaps: bool = False
    ) -> dict[str, torch.Tensor]:
        """The pruned block's linears in original coordinates: W_eff = W * M (magnitude, Wanda) or
        SparseGPT's compensated weights for mask M, and b + (W - W_eff) d where a shift exists.
        ``swaps`` (hard masks, no gradient): Wanda's masks refined as the pruner will refine them;
        its objective is the same in original and folded coordinates, so only the mask it starts
        from carries the transform."""
        c, d = importance(self.plan, T), input_shifts(self.plan, T)
        out: dict[str, torch.Tensor] = {}
        for path in self.linears:
            group = self.plan.group_of(path)
            W = self.params[f"{path}.weight"]  # [out, in]
            L = self._log_scores(path, group, d[group]) + c[path].log()  # [out, in]
            M = keep_mask(L, self.target, mode=mode or self.spec.mask, tau=self.tau, segment=self.segment)
            if not self.traits.keeps_weights:  # the compensating update, differentiable in M
                W_eff = sparsegpt_weights(W, M, self._chain[group], SPARSEGPT_HOPS)
            elif swaps and self.swap_rounds > 0:
                H = self.stats[group].centred_H(d[group])  # (detaches the shift itself)
                keep = swap_refine(
                    W.detach(), M.detach() > 0.5, H, self.target, self.swap_rounds, shrink=self.swap_shrink
                ).keep
                W_eff = W * keep
            else:
                W_eff = W * M
            out[f"{path}.weight"] = W_eff
            shift = d[group]
            if shift is not None:
                out[f"{path}.bias"] = self.params[f"{path}.bias"] + (W - W_eff) @ shift  # [out]
        return out

    # -- the objective ----------------------------------------------------------------------------

    def loss(
        self,
        T: Transform,
        hidden: torch.Tensor,
        kwargs: dict[str, Any],
        Y: torch.Tensor,
        *,
        mode: str | None = None,
    ) -> torch.Tensor:
        """Relative MSE of the pruned block (mask ``mode``, default the spec's) against Y."""
        overrides = self.pruned_params(T, mode=mode)
        return _rel_mse(forward_with(self.layer, {**self.params, **overrides}, hidden, kwargs), Y)

    def regulariser(self, T: Transform) -> torch.Tensor:
        """Mean over linears of (sigma_max(folded W) / sigma_max(W))^2: the spectral norm of each
        scaled weight relative to the original, one warm-started power iteration per step."""
        rows, cols = self._row_scales(T), input_scales(self.plan, T)
        terms = []
        for path in self.linears:
            W = self.params[f"{path}.weight"]
            r = rows.get(path)
            Wp = W * cols[self.plan.group_of(path)]  # [out, in]
            if r is not None:
                Wp = Wp * r.unsqueeze(1)
            if path not in self._sigma0:
                self._sigma0[path] = _spectral(W, self._power, path, _POWER_ITERS_INIT).item()
                _spectral(Wp.detach(), self._power, path, _POWER_ITERS_INIT)
            terms.append((_spectral(Wp, self._power, path, 1) / self._sigma0[path]).square())
        return torch.stack(terms).mean()

    def _row_scales(self, T: Transform) -> dict[str, torch.Tensor]:
        a, plan = self.plan.arch, self.plan
        rows: dict[str, torch.Tensor] = {a.v: 1.0 / normalised(T.o_log_s).reshape(-1)}
        if T.down_log_s is not None:
            rows[a.mlp_in[-1]] = 1.0 / normalised(T.down_log_s)
        pair = qk_row_scales(plan, T)
        if pair is not None:
            rows[a.q], rows[a.k] = pair
        return rows

    # -- training and the final choice ------------------------------------------------------------

    def fit(
        self,
        T0: Transform,
        minibatches: list[Minibatch],
        targets: list[torch.Tensor],
        generator: torch.Generator | None,
    ) -> tuple[Transform, list[float]]:
        T = T0.clone().requires_grad_(True)
        opt = torch.optim.Adam(T.tensors(), lr=self.spec.lr)
        losses: list[float] = []
        held_out = set(check_subset(len(minibatches)))
        train = [i for i in range(len(minibatches)) if i not in held_out] or sorted(held_out)
        for _epoch in range(self.spec.epochs):
            self.refresh(T)
            order = [train[k] for k in torch.randperm(len(train), generator=generator).tolist()]
            for i in order:
                hidden, kwargs = minibatches[i].on(self.device)
                opt.zero_grad(set_to_none=True)
                # the walk's precision (bfloat16 where native): the steps only steer the masks
                with layer_precision(self.layer, self.device):
                    mse = self.loss(T, hidden, kwargs, targets[i].to(self.device))
                objective = mse + self.spec.reg * self.regulariser(T) if self.spec.reg > 0 else mse
                objective.backward()
                opt.step()
                losses.append(float(mse.detach()))
        return T.requires_grad_(False), losses

    @torch.no_grad()
    def choose(
        self,
        candidates: dict[str, Transform],
        minibatches: list[Minibatch],
        targets: list[torch.Tensor],
    ) -> tuple[tuple[str, Transform], dict[str, float]]:
        """Loss of each candidate after REAL pruning on the held-out check subset. A candidate
        replaces plain pruning (identity) only if it beats it by more than ``MARGIN`` (relative);
        among those the lowest wins. So induction never does worse than plain pruning there, and a
        gain within noise is not taken."""
        idx = check_subset(len(minibatches))
        losses: dict[str, float] = {}
        for name, T in candidates.items():
            same = next((k for k in losses if _equal(candidates[k], T)), None)
            if same is not None:  # e.g. init == identity: no need to run it twice
                losses[name] = losses[same]
                continue
            losses[name] = self.pruned_loss(T, [minibatches[i] for i in idx], [targets[i] for i in idx])
        bar = losses["identity"] * (1.0 - MARGIN)
        better = [k for k in candidates if k != "identity" and losses[k] < bar]
        best = min(better, key=lambda k: (losses[k], -list(candidates).index(k))) if better else "identity"
        return (best, candidates[best]), losses

    def pruned_loss(
        self,
        T: Transform,
        minibatches: list[Minibatch],
        targets: list[torch.Tensor],
    ) -> float:
        """Relative MSE of the block pruned as the pruner will prune it after folding ``T``.

        Magnitude and Wanda: the hard mask of training is the pruner's mask (exact). SparseGPT:
        its mask and update depend on the sweep, so the folded weights are pruned by
        ``core.sparsegpt.sparsegpt`` itself, with the folded Hessian S^-1 H S^-1 and ``col_weight``."""
        if not self.traits.keeps_weights:
            params = self._sparsegpt_folded(T)
        else:
            self.refresh(T)
            # the hard mask (the "ste" forward); then Wanda's swaps, as the pruner will
            params = {**self.params, **self.pruned_params(T, mode="hard", swaps=True)}
        return held_out_loss(self.layer, params, minibatches, targets, self.device)

    def _sparsegpt_folded(self, T: Transform) -> dict[str, torch.Tensor]:
        """The layer's parameters with ``T`` folded and every linear pruned by SparseGPT."""
        P = {**self.params, **fold_params(self.plan, self.params, T)}
        s, d, c = input_scales(self.plan, T), input_shifts(self.plan, T), importance(self.plan, T)
        factors: dict[str, HinvFactor] = {}
        for path in self.linears:
            g = self.plan.group_of(path)
            st = self.stats[g]
            H = st.centred_H(d[g]) / torch.outer(s[g], s[g]) * (2.0 / st.n)  # [in, in] of (X - d) / s
            if g not in factors and self.order == "natural":
                factors[g] = inverse_hessian_factor(H, dampening=self.dampening)
            r = sparsegpt(
                P[f"{path}.weight"], H, self.target, blocksize=self.blocksize, dampening=self.dampening,
                col_weight=c[path], factor=factors.get(g), order=self.order,
            )  # fmt: skip
            P[f"{path}.weight"] = r.W
        return P


def _rel_mse(Y_hat: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    return (Y_hat - Y).square().sum() / Y.square().sum().clamp_min(1e-30)


def _spectral(
    W: torch.Tensor, state: dict[str, tuple[torch.Tensor, torch.Tensor]], key: str, iters: int
) -> torch.Tensor:
    """sigma_max(W) by power iteration; u, v carried over between calls (no gradient through them)."""
    with torch.no_grad():
        Wd = W.detach()
        if key in state:
            u, v = state[key]
        else:
            v = torch.ones(W.shape[1], dtype=W.dtype, device=W.device) / math.sqrt(W.shape[1])
            u = torch.nn.functional.normalize(Wd @ v, dim=0)
        for _ in range(iters):
            u = torch.nn.functional.normalize(Wd @ v, dim=0)
            v = torch.nn.functional.normalize(Wd.T @ u, dim=0)
        state[key] = (u, v)
    return u @ W @ v


def _equal(A: Transform, B: Transform) -> bool:
    return all(torch.equal(a, b) for a, b in zip(A.tensors(), B.tensors(), strict=True))
