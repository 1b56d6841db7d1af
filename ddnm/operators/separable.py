"""Separable operators: per channel Y = M_0 X M_1ᵀ with 1-D matrices along rows and columns.

Super-resolution, deblurring and their chains have this form. The 2-D SVD is the Kronecker product
of the two 1-D SVDs M_a = U_a diag(s_a) V_aᵀ: in the spectral layout the coefficients are
V_0ᵀ X V_1 and s[k, l] = s_0[k] · s_1[l] (zero-padded beyond the m_a rows of M_a, i.e. outside the
top-left (h, w) corner). The 1-D factors depend on the image size, so they are computed on first use
for each (operator, size) and cached in float64 on the CPU; calls move them to x's device/dtype.
The cache keeps the latest `FACTOR_CACHE_SIZE` (operator, size, axis) entries: an entry holds five
n × n-sized matrices (about 2 MB at n = 256), and a service meets a new blur kernel with every job.

Truncation: 1-D singular values below `cutoff` · max(s_a) are set to zero and the operator *is*
the truncated product U_a diag(s_a) V_aᵀ, so A and A⁺ satisfy the Penrose conditions exactly
(per axis, hence in 2-D: (M_0 ⊗ M_1)⁺ = M_0⁺ ⊗ M_1⁺).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ddnm.operators.base import ImageShape, SVDOperator, pinv_values
from ddnm.operators.linalg import check_divides, check_image

# 1-D singular values below this fraction of the largest count as numerical zeros (float64 SVD).
RANK_RTOL = 1e-9
FACTOR_CACHE_SIZE = 32


class AxisFactors(NamedTuple):
    """The truncated SVD of one 1-D matrix M (m, n), float64 on the CPU."""

    M: Tensor  # (m, n) U diag(s) V[:, :m]ᵀ
    M_pinv: Tensor  # (n, m) V[:, :m] diag(s⁺) Uᵀ
    U: Tensor  # (m, m)
    s: Tensor  # (n,) zero beyond m and where truncated
    V: Tensor  # (n, n)


class SeparableOperator(SVDOperator):
    """Y_c = M_0 X_c M_1ᵀ for every channel c; y (B, C, H/factor, W/factor)."""

    factor: int = 1  # downsampling factor along both axes
    cutoff: float = 0.0  # relative 1-D singular-value cutoff (see module docstring)

    @abstractmethod
    def axis_matrix(self, n: int, axis: int) -> Tensor:
        """The 1-D matrix (n/factor, n) in float64 along `axis` (0: rows, 1: columns)."""

    def axis_svd(self, n: int, axis: int) -> tuple[Tensor, Tensor, Tensor]:
        """(U (m, m), s (m,), V (n, n)) with axis_matrix = U diag(s) V[:, :m]ᵀ."""
        U, s, Vh = torch.linalg.svd(self.axis_matrix(n, axis), full_matrices=True)
        return U, s, Vh.T

    def factors(self, x: Tensor, size: Sequence[int]) -> tuple[AxisFactors, AxisFactors]:
        """Both axes' factors for an image of `size` (H, W), on x's device and dtype."""
        check_divides("factor", self.factor, tuple(size))
        return tuple(  # type: ignore[return-value]
            AxisFactors(*(t.to(x) for t in axis_factors(self, n, axis)))
            for axis, n in enumerate(size)
        )

    def A(self, x: Tensor) -> Tensor:
        f0, f1 = self.factors(check_image("x", x), x.shape[-2:])
        return f0.M @ x @ f1.M.T

    def A_pinv(self, y: Tensor) -> Tensor:
        f0, f1 = self.factors(y, self.x_shape(y)[1:])
        return f0.M_pinv @ y @ f1.M_pinv.T

    def V_t(self, x: Tensor) -> Tensor:
        f0, f1 = self.factors(check_image("x", x), x.shape[-2:])
        return f0.V.T @ x @ f1.V

    def V(self, c: Tensor) -> Tensor:
        f0, f1 = self.factors(c, c.shape[-2:])
        return f0.V @ c @ f1.V.T

    def U_t(self, y: Tensor) -> Tensor:
        H, W = self.x_shape(y)[1:]
        f0, f1 = self.factors(y, (H, W))
        c = F.pad(f0.U.T @ y @ f1.U, (0, W - f1.U.shape[0], 0, H - f0.U.shape[0]))
        return c * (torch.outer(f0.s, f1.s) > 0)

    def U(self, c: Tensor) -> Tensor:
        f0, f1 = self.factors(c, c.shape[-2:])
        h, w = f0.U.shape[0], f1.U.shape[0]
        return f0.U @ c[..., :h, :w] @ f1.U.T

    def singular_values(self, shape: ImageShape) -> Tensor:
        s0, s1 = (axis_factors(self, n, axis).s for axis, n in enumerate(shape[1:]))
        return torch.outer(s0, s1)[None]

    def x_shape(self, y: Tensor) -> ImageShape:
        C, h, w = check_image("y", y).shape[1:]
        return (C, h * self.factor, w * self.factor)


@lru_cache(maxsize=FACTOR_CACHE_SIZE)
def axis_factors(op: SeparableOperator, n: int, axis: int) -> AxisFactors:
    """Truncated 1-D SVD factors of `op` along `axis` for size n (cached per operator value)."""
    U, s, V = op.axis_svd(n, axis)
    m = U.shape[0]
    s = torch.where(s > max(op.cutoff, RANK_RTOL) * s.max(), s, torch.zeros_like(s))
    V_m = V[:, :m]
    M = (U * s) @ V_m.T
    M_pinv = (V_m * pinv_values(s)) @ U.T
    return AxisFactors(M, M_pinv, U, F.pad(s, (0, n - m)), V)
