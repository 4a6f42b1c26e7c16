"""Input statistics of a decoder layer's linears, accumulated over calibration batches: the one
statistics layer of the pruners and of induction.

The walker's passes (core/passes.py) feed every batch a linear sees into ``InputStats.update``;
the pruners then read Wanda's per-channel norm ``col_norm`` and SparseGPT's ``hessian``.
Induction's ``StatsRecorder`` fills the same ``InputStats`` with channel moments as well (its
scales start from them). Sums (not means) are kept so that the result does not depend on how the
calibration set was cut into batches.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spruce.core.arch import ArchSpec
from spruce.core.errors import SystemFault
from spruce.core.precision import exact

# Rows of |x| kept per group for per-channel medians (induction's ``init: median``; exact medians
# would cost memory).
MEDIAN_ROWS = 4096


@dataclass
class InputStats:
    """Statistics of one linear layer's input X (rows are tokens), float32 sums."""

    n: int  # rows (tokens) seen
    sq_sum: torch.Tensor  # [in] sum over tokens of x_j^2
    H: torch.Tensor | None  # [in, in] sum over tokens of x x^T; None when not wanted
    # [out, in] sum over tokens of (y_dense - y) x^T for a linear y = W x + b that fits the dense
    # model (``walker.collect_paired_stats``): y_dense is the same linear's output on the dense
    # model's input of the token, so y_dense - y = W (x_dense - x), read off the forward passes
    # instead of multiplied again. None unless asked for.
    G: torch.Tensor | None = None
    # H reads every ``every``-th token only (Wanda's swaps: half the Gram products at no
    # measured loss, docs/pruners.md); ``h_rows`` counts the tokens it read.
    every: int = 1
    h_rows: int = 0
    # Channel moments, for induction's start and shifts (``moments=True``): [in] sums of x_j and
    # |x_j|, and up to MEDIAN_ROWS rows of |x| for medians.
    sum: torch.Tensor | None = None
    abs_sum: torch.Tensor | None = None
    sample: torch.Tensor | None = None
    # H accumulated by one fused multiply-add per batch (induction's recorder, which never needs
    # a batch's X^T X itself) instead of ``gram``'s mirrored blocks.
    fused: bool = False

    @classmethod
    def new(
        cls,
        in_features: int,
        *,
        device: torch.device | str,
        want_hessian: bool,
        cross_out: int | None = None,
        hessian_every: int = 1,
        moments: bool = False,
        fused: bool = False,
    ) -> InputStats:
        """``cross_out``: the linear's output size, to accumulate ``G`` too; ``hessian_every``:
        H from every n-th token (cross statistics need every token); ``moments``: the channel
        moments too; ``fused``: H by ``addmm_`` (see the field)."""
        if hessian_every < 1 or (cross_out is not None and hessian_every != 1):
            raise SystemFault(f"hessian_every={hessian_every}: must be >= 1, and 1 with cross statistics")
        sq_sum = torch.zeros(in_features, dtype=torch.float32, device=device)
        H = (
            torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
            if want_hessian
            else None
        )
        G = (
            None
            if cross_out is None
            else torch.zeros(cross_out, in_features, dtype=torch.float32, device=device)
        )
        stats = cls(n=0, sq_sum=sq_sum, H=H, G=G, every=hessian_every, fused=fused)
        if moments:
            stats.sum, stats.abs_sum = sq_sum.clone(), sq_sum.clone()
            stats.sample = torch.zeros(0, in_features, dtype=torch.float32, device=device)
        return stats

    def update(self, x: torch.Tensor, dy: torch.Tensor | None = None) -> None:
        """Add a batch ``x`` of shape [..., in] (any float dtype, any device); with cross statistics,
        ``dy`` [..., out] is y_dense - y of the linear on the same tokens."""
        X = self._rows(x)  # [rows, in]
        self._add(X)
        if self.G is not None:
            if dy is None or dy.shape[:-1] != x.shape[:-1] or dy.shape[-1] != self.G.shape[0]:
                raise SystemFault("cross statistics need y_dense - y of every batch, one row per token")
            dY = dy.detach().reshape(-1, self.G.shape[0]).to(device=self.G.device, dtype=torch.float32)
            self.G.addmm_(dY.T, X)  # [out, in] += (Y_d - Y)^T X

    def update_against(
        self, x: torch.Tensor, y_ref: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> None:
        """``update(x, y_ref - y)`` for the linear y = weight x + bias, without computing y: the
        cross sum is (y_ref - bias)^T X - weight X^T X, from the X^T X the Hessian needs anyway
        (exact algebra; saves one multiply of every token by the weight)."""
        if self.G is None or self.H is None:
            raise SystemFault("update_against needs InputStats with a Hessian and cross statistics")
        X = self._rows(x)  # [rows, in]
        out = self.G.shape[0]
        if (
            y_ref.shape[:-1] != x.shape[:-1]
            or y_ref.shape[-1] != out
            or tuple(weight.shape) != tuple(self.G.shape)
        ):
            raise SystemFault("cross statistics need the reference output of every token, one row per token")
        XtX = self._add(X)  # [in, in]
        assert XtX is not None  # (a Hessian is kept: checked above)
        Y = y_ref.detach().reshape(-1, out).to(device=self.G.device, dtype=torch.float32)  # [rows, out]
        if bias is not None:
            Y = Y - bias.detach().to(device=Y.device, dtype=torch.float32)
        self.G.addmm_(Y.T, X)  # += (Y_ref - b)^T X
        self.G.addmm_(weight.detach().to(device=self.G.device, dtype=torch.float32), XtX, alpha=-1.0)

    def _add(self, X: torch.Tensor) -> torch.Tensor | None:
        """Count the rows X [rows, in] into ``n``, ``sq_sum`` and ``H``; returns their X^T X
        (None when no Hessian is kept)."""
        self.n += X.shape[0]
        self.sq_sum += X.square().sum(dim=0)  # [in]
        if self.sum is not None:
            self._add_moments(X)
        if self.H is None:
            return None
        if self.fused:
            self.h_rows += X.shape[0]
            self.H.addmm_(X.T, X)
            return None
        Xh = X[:: self.every] if self.every > 1 else X
        self.h_rows += Xh.shape[0]
        XtX = gram(Xh)  # [in, in]
        self.H += XtX
        return XtX

    def _add_moments(self, X: torch.Tensor) -> None:
        assert self.sum is not None and self.abs_sum is not None and self.sample is not None
        self.sum += X.sum(0)
        self.abs_sum += X.abs().sum(0)
        room = MEDIAN_ROWS - self.sample.shape[0]
        if room > 0:  # strided through the batch's tokens
            self.sample = torch.cat([self.sample, X[:: max(1, X.shape[0] // room)][:room].abs()])

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        in_features = self.sq_sum.shape[0]
        if x.shape[-1] != in_features:
            raise SystemFault(
                f"InputStats expects inputs with {in_features} features, got shape {tuple(x.shape)}"
            )
        return x.detach().reshape(-1, in_features).to(device=self.sq_sum.device, dtype=torch.float32)

    @property
    def col_norm(self) -> torch.Tensor:
        """[in] Wanda's ||X_j||_2 over every token seen."""
        return self.sq_sum.sqrt()

    def hessian(self) -> torch.Tensor:
        """[in, in] SparseGPT's H = 2/n X^T X (a new tensor; the sums stay untouched)."""
        if self.H is None:
            raise SystemFault("InputStats was created with want_hessian=False: no Hessian was accumulated")
        if self.h_rows == 0:
            raise SystemFault("InputStats has seen no inputs: the Hessian is undefined")
        return self.H * (2.0 / self.h_rows)

    def cross(self) -> torch.Tensor | None:
        """[out, in] W (X_d - X)^T X on the scale of ``hessian()``; None without cross statistics."""
        if self.G is None:
            return None
        if self.n == 0:
            raise SystemFault("InputStats has seen no inputs: the cross statistics are undefined")
        return self.G * (2.0 / self.n)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sum of x_j [in], sum of |x_j| [in], the |x| sample [rows, in]), kept with ``moments``."""
        if self.sum is None or self.abs_sum is None or self.sample is None:
            raise SystemFault("InputStats was created without moments: no channel sums were kept")
        return self.sum, self.abs_sum, self.sample

    def permuted(self, p: torch.Tensor) -> InputStats:
        """A copy for the input with its channels reordered (new channel j is old p[j])."""
        q = p.to(self.sq_sum.device)
        return dataclasses.replace(
            self,
            sq_sum=self.sq_sum[q],
            H=None if self.H is None else self.H[q][:, q],
            G=None if self.G is None else self.G[:, q],
            sum=None if self.sum is None else self.sum[q],
            abs_sum=None if self.abs_sum is None else self.abs_sum[q],
            sample=None if self.sample is None else self.sample[:, q],
        )

    def centred_sq(self, d: torch.Tensor | None) -> torch.Tensor:
        """[in] sum over tokens of (x_j - d_j)^2, from the moments (differentiable in d)."""
        if d is None:
            return self.sq_sum
        assert self.sum is not None, "centring needs the channel moments"
        return (self.sq_sum - 2.0 * d * self.sum + self.n * d * d).clamp_min(0.0)

    def centred_H(self, d: torch.Tensor | None) -> torch.Tensor:
        """[in, in] sum of (x - d)(x - d)^T, from the moments."""
        assert self.H is not None
        if d is None:
            return self.H
        assert self.sum is not None, "centring needs the channel moments"
        d = d.detach()
        return self.H - torch.outer(d, self.sum) - torch.outer(self.sum, d) + self.n * torch.outer(d, d)


# Column blocks of ``gram``: measured faster than one full product at the benchmark model's widths.
GRAM_BLOCK = 256


def gram(X: torch.Tensor, block: int = GRAM_BLOCK) -> torch.Tensor:
    """[in, in] X^T X of rows X [rows, in], multiplying each pair of column blocks once and
    mirroring (the product is symmetric): about half the work of ``X.T @ X`` for wide X."""
    d = X.shape[1]
    if d <= block:
        return X.T @ X
    out = torch.empty(d, d, dtype=X.dtype, device=X.device)
    for i in range(0, d, block):
        j = min(i + block, d)
        out[i:j, i:] = X[:, i:j].T @ X[:, i:]  # this block row, from the diagonal block on
        out[j:, i:j] = out[i:j, j:].T
    return out


@dataclass
class OutputSensitivity:
    """How strongly each output channel of one of the MLP's input linears (gate/up, fc1) moves the
    MLP's hidden activation h (the input of down / fc2): sums over tokens of (dh_i / dz_i)^2, z the
    linear's output. h_i depends on channel i of each input linear alone (act(gate) * up, act(fc1)),
    so the derivative is elementwise: act(gate_i) for up, act'(gate_i) up_i for gate, act'(z_i) for fc1.
    """

    n: int  # tokens seen
    sq_sum: torch.Tensor  # [out] sum over tokens of (dh_i / dz_i)^2

    @classmethod
    def new(cls, out_features: int, *, device: torch.device | str) -> OutputSensitivity:
        return cls(n=0, sq_sum=torch.zeros(out_features, dtype=torch.float32, device=device))

    def update(self, deriv: torch.Tensor) -> None:
        """Add a batch of elementwise derivatives [..., out]."""
        D = (
            deriv.detach()
            .reshape(-1, self.sq_sum.shape[0])
            .to(device=self.sq_sum.device, dtype=torch.float32)
        )
        self.n += D.shape[0]
        self.sq_sum += D.square().sum(dim=0)

    @property
    def mean_sq(self) -> torch.Tensor:
        """[out] E[(dh_i / dz_i)^2] over the tokens seen."""
        if self.n == 0:
            raise SystemFault("OutputSensitivity has seen no inputs")
        return self.sq_sum / self.n


class StatsRecorder:
    """Forward pre-hooks that fill the ``InputStats`` (with moments) of a layer's four input groups
    (``stats``: "attn", "o", "mlp", "down") from forwards run through the module (its own or
    ``functional_call``'s), over the first ``sequences`` sequences they see (all where 0 or
    less); induction's statistics. ``seconds``: the time spent in the hooks, so a caller whose
    forward they ride on can charge them to induction. Hooks are removed on exit, even where the
    forward raises. The sums do not depend on how the sequences are batched; the median sample
    does once a forward holds more than ``MEDIAN_ROWS`` tokens (only ``init: median`` reads it)."""

    def __init__(self, layer: nn.Module, arch: ArchSpec, *, want_H: bool, sequences: int = 0) -> None:
        self.layer, self.arch, self.want_H, self.sequences = layer, arch, want_H, sequences
        self.stats: dict[str, InputStats] = {}
        self.seconds = 0.0
        self._seen: dict[str, int] = {}
        self._batch = 0  # sequences in the forward under way (set by the layer's own pre-hook)
        self._handles: list[Any] = []

    def __enter__(self) -> StatsRecorder:
        a = self.arch
        leaders = {"attn": a.q, "o": a.o, "mlp": a.mlp_in[0], "down": a.mlp_out}
        self._handles = [self.layer.register_forward_pre_hook(self._on_layer, with_kwargs=True)]
        try:
            for group, path in leaders.items():
                hook = self._hook_for(group)
                self._handles.append(self.layer.get_submodule(path).register_forward_pre_hook(hook))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _on_layer(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        self._batch = int(hidden.shape[0])

    def _hook_for(self, group: str) -> Any:
        @exact  # as the walker's own hooks: nothing in them computes under the forward's autocast
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            started = time.perf_counter()
            seen = self._seen.get(group, 0)
            take = self._batch if self.sequences <= 0 else min(self._batch, self.sequences - seen)
            if take > 0:
                self._seen[group] = seen + take
                X = args[0].detach()
                # [b, ..., in] or [b * seq, in]: the first ``take`` sequences, as [tokens, in]
                X = X.reshape(self._batch, -1, X.shape[-1])[:take].reshape(-1, X.shape[-1]).to(torch.float32)
                st = self.stats.get(group)
                if st is None:
                    st = self.stats[group] = InputStats.new(
                        X.shape[1], device=X.device, want_hessian=self.want_H, moments=True, fused=True
                    )
                st._add(X)
            self.seconds += time.perf_counter() - started

        return hook
