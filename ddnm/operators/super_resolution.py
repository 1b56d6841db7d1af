"""Super-resolution: y = the image downsampled by an integer factor f (box or bicubic filter).

Both filters are separable, y_c = M X_c Mᵀ per channel with a 1-D matrix M of size (N/f) × N:
    box:      row r averages inputs f·r … f·r + f - 1 (the f × f block mean in 2-D);
    bicubic:  row r holds the 4f taps k_i ∝ W((i - 2f + 0.5) / f), i = 0 … 4f-1, summing to 1
              (Keys cubic W with a = -0.5), on inputs j = f·r + ⌊f/2⌋ - 2f + i; out-of-range inputs
              are mirrored half-sample (j < 0 → -j - 1, j >= N → 2N - 1 - j) and weights landing on
              the same input are added.
Box SVD in closed form: per block the 2-D row is ones / f², so s = 1/f and the block's basis is an
orthonormal basis of R^{f²} whose first vector is ones / f (the Kronecker square of a 1-D
Householder basis with first vector ones / √f). Bicubic SVD: from the SVD of M per axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ddnm.operators.linalg import check_divides, householder_basis
from ddnm.operators.separable import SeparableOperator

FILTERS = ("box", "bicubic")


def keys_cubic(t: Tensor, a: float = -0.5) -> Tensor:
    """Keys' cubic convolution kernel W(t), support |t| < 2."""
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def bicubic_taps(factor: int) -> Tensor:
    """The 4f taps k_i ∝ W((i - 2f + 0.5) / f), summing to 1 (f = 2: [-3, -9, 29, …] / 256)."""
    i = torch.arange(4 * factor, dtype=torch.float64)
    k = keys_cubic((i - 2 * factor + 0.5) / factor)
    return k / k.sum()


def mirror(j: Tensor, n: int) -> Tensor:
    """Half-sample symmetric reflection of indices into [0, n) (repeated for short axes)."""
    j = j % (2 * n)
    return torch.where(j >= n, 2 * n - 1 - j, j)


def bicubic_matrix(n: int, factor: int) -> Tensor:
    """The (n/f, n) bicubic downsampling matrix M in float64."""
    m = n // factor
    i = torch.arange(4 * factor)
    r = torch.arange(m)[:, None]
    j = mirror(factor * r + factor // 2 - 2 * factor + i, n)
    M = torch.zeros(m, n, dtype=torch.float64)
    return M.scatter_add_(1, j, bicubic_taps(factor).expand(m, -1).contiguous())


@dataclass(frozen=True)
class SuperResolution(SeparableOperator):
    """y = x downsampled by `factor`: x (B, C, H, W) -> y (B, C, H/f, W/f), f dividing H and W.

    factor: integer f >= 1. filter: "box" (f × f block mean) or "bicubic" (see module docstring).
    """

    factor: int
    filter: Literal["box", "bicubic"] = "box"

    def __post_init__(self) -> None:
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 1:
            raise ValueError(f"factor must be an integer >= 1, got {self.factor!r}")
        if self.filter not in FILTERS:
            raise ValueError(f"filter must be one of {FILTERS}, got {self.filter!r}")

    def axis_matrix(self, n: int, axis: int) -> Tensor:
        check_divides("factor", self.factor, (n,))
        if self.filter == "bicubic":
            return bicubic_matrix(n, self.factor)
        f = self.factor
        return torch.kron(torch.eye(n // f, dtype=torch.float64), torch.full((1, f), 1.0 / f))

    def axis_svd(self, n: int, axis: int) -> tuple[Tensor, Tensor, Tensor]:
        if self.filter == "bicubic":
            return super().axis_svd(n, axis)
        check_divides("factor", self.factor, (n,))
        f, m = self.factor, n // self.factor
        Q = householder_basis(torch.full((f,), f**-0.5, dtype=torch.float64))
        V = torch.kron(torch.eye(m, dtype=torch.float64), Q)
        first_in_block = torch.argsort((torch.arange(n) % f != 0).long(), stable=True)
        return (
            torch.eye(m, dtype=torch.float64),
            torch.full((m,), f**-0.5, dtype=torch.float64),
            V[:, first_in_block],
        )
