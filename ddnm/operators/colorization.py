"""Colorization: y = the weighted gray value Σ_c w_c x_c of every pixel.

Per pixel A is the 1 × C row wᵀ = ‖w‖ · (w / ‖w‖)ᵀ, so A⁺ y = y · w / ‖w‖² and the SVD has one
singular value ‖w‖ with right singular vector w / ‖w‖; the other C - 1 channel directions (the
color) are the null space. Spectral layout: channel 0 holds the gray coefficient (w/‖w‖)ᵀ x, the
remaining channels an orthonormal completion (a Householder basis).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ddnm.operators.base import ImageShape, SVDOperator
from ddnm.operators.linalg import householder_basis


@dataclass(frozen=True)
class Colorization(SVDOperator):
    """x (B, C, H, W) -> y (B, 1, H, W), y = Σ_c w_c x_c, with C = len(weights).

    The default weights are exactly 1/3 each; the reference goldens use (0.3333, 0.3334, 0.3333).
    """

    weights: Sequence[float] = (1 / 3, 1 / 3, 1 / 3)
    Q: Tensor = field(init=False, repr=False, compare=False)  # (C, C), first column w / ‖w‖

    def __post_init__(self) -> None:
        w = torch.as_tensor(self.weights, dtype=torch.float64)
        if w.ndim != 1 or len(w) < 1 or not torch.isfinite(w).all() or not w.any():
            raise ValueError(
                f"weights must be a non-zero finite 1-D sequence, got {self.weights!r}"
            )
        object.__setattr__(self, "weights", tuple(w.tolist()))
        object.__setattr__(self, "Q", householder_basis(w / w.norm()))

    def _w(self, t: Tensor, scale: float = 1.0) -> Tensor:
        """w · scale as (1, C, 1, 1) on t's device/dtype (scaled in float64)."""
        w = torch.tensor(self.weights, dtype=torch.float64) * scale
        return w.view(1, -1, 1, 1).to(t)

    def _check(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != len(self.weights):
            raise ValueError(
                f"x must have shape (B, {len(self.weights)}, H, W) to match the weights, "
                f"got {tuple(x.shape)}"
            )
        return x

    def A(self, x: Tensor) -> Tensor:
        return (self._check(x) * self._w(x)).sum(1, keepdim=True)

    def A_pinv(self, y: Tensor) -> Tensor:
        self.x_shape(y)
        return y * self._w(y, 1.0 / sum(w * w for w in self.weights))

    def V_t(self, x: Tensor) -> Tensor:
        return torch.einsum("ji,bjhw->bihw", self.Q.to(x), self._check(x))

    def V(self, c: Tensor) -> Tensor:
        return torch.einsum("ij,bjhw->bihw", self.Q.to(c), self._check(c))

    def U_t(self, y: Tensor) -> Tensor:
        C, H, W = self.x_shape(y)
        return torch.cat([y, y.new_zeros(y.shape[0], C - 1, H, W)], dim=1)

    def U(self, c: Tensor) -> Tensor:
        return self._check(c)[:, :1]

    def singular_values(self, shape: ImageShape) -> Tensor:
        s = torch.zeros(len(self.weights), 1, 1, dtype=torch.float64)
        s[0] = torch.tensor(self.weights, dtype=torch.float64).norm()
        return s

    def x_shape(self, y: Tensor) -> ImageShape:
        if y.ndim != 4 or y.shape[1] != 1:
            raise ValueError(f"y must have shape (B, 1, H, W), got {tuple(y.shape)}")
        return (len(self.weights), y.shape[2], y.shape[3])
