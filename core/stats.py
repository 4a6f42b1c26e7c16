"""Input statistics of one linear layer, accumulated over calibration batches.

The walker feeds every batch a linear sees into ``InputStats.update``; the pruners then read
Wanda's per-channel norm ``col_norm`` and SparseGPT's ``hessian``. Sums (not means) are kept so
that the result does not depend on how the calibration set was cut into batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.errors import SystemFault


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

    @classmethod
    def new(
        cls,
        in_features: int,
        *,
        device: torch.device | str,
        want_hessian: bool,
        cross_out: int | None = None,
        hessian_every: int = 1,
    ) -> InputStats:
        """``cross_out``: the linear's output size, to accumulate ``G`` too; ``hessian_every``:
        H from every n-th token (cross statistics need every token)."""
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
        return cls(n=0, sq_sum=sq_sum, H=H, G=G, every=hessian_every)

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
        if self.H is None:
            return None
        Xh = X[:: self.every] if self.every > 1 else X
        self.h_rows += Xh.shape[0]
        XtX = gram(Xh)  # [in, in]
        self.H += XtX
        return XtX

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


# Column blocks of ``gram``: measured on 2 cores with 16k tokens, 256 took 0.65x the time of one
# full product at 1536 inputs and 0.76x at 576.
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
