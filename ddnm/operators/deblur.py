"""Deblurring: y = k ⋆ x, a separable blur with 'same' output size and a chosen boundary.

A = K_0 ⊗ K_1 per channel with the 1-D matrices K_a[r, j] = k_a[j - r + p_a] (p_a the half-width)
for the taps inside the image. Taps beyond the border read
    boundary "zero"     zeros: what `torch.nn.functional.conv2d(x, k, padding="same")` computes
                        per channel for k = k_0 k_1ᵀ (cross-correlation; identical to convolution
                        for the symmetric kernels below), and the reference implementation's;
    boundary "reflect"  the image mirrored about its border, the border pixel repeated
                        (… c b a | a b c …, scipy.ndimage's "reflect", what cameras and image
                        editors approximate): the taps fold back onto the image, so K_a stays
                        an n x n matrix with an exact SVD and a blurred photograph has no dark
                        frame to explain.

Blur matrices have tiny singular values, and 1 / s would amplify rounding errors without bound.
Per axis, singular values below `cutoff` · max(s_a) are zeroed and A is *defined* as the truncated
SVD. The 2-D singular values kept are >= cutoff² · max(s), and in the Kronecker basis the dropped
part is diagonal with entries s_0[k] s_1[l] <= cutoff · max(s), so
    ‖A x - k ⋆ x‖ <= cutoff · ‖K_0‖₂ ‖K_1‖₂ · ‖x‖ <= cutoff · ‖k_0‖₁ ‖k_1‖₁ · ‖x‖
(= cutoff · ‖x‖ for a non-negative kernel summing to 1). The default cutoff 1e-2 bounds A⁺'s gain by
1e4 (relative to 1 / max(s)), safe for float32 sampling; cutoff=0 keeps the exact blur (only
numerically zero singular values, below 1e-9 relative, are dropped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ddnm.operators.separable import SeparableOperator

KernelLike = Tensor | np.ndarray | Sequence[Sequence[float]]
BOUNDARIES = ("zero", "reflect")


def gaussian_taps(sigma: float, size: int | None = None) -> Tensor:
    """1-D Gaussian exp(-t² / 2σ²), t = -p … p, summing to 1; size 2·⌈3σ⌉ + 1 by default."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    size = 2 * math.ceil(3 * sigma) + 1 if size is None else size
    check_size(size)
    t = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def gaussian_kernel(sigma: float, size: int | None = None) -> Tensor:
    """Isotropic Gaussian blur kernel (size, size), float64, summing to 1."""
    return anisotropic_gaussian_kernel(sigma, sigma, size)


def anisotropic_gaussian_kernel(
    sigma_rows: float, sigma_cols: float, size: int | tuple[int, int] | None = None
) -> Tensor:
    """Axis-aligned Gaussian with widths σ along rows (vertical) and columns (horizontal)."""
    sizes = size if isinstance(size, tuple) else (size, size)
    return torch.outer(gaussian_taps(sigma_rows, sizes[0]), gaussian_taps(sigma_cols, sizes[1]))


def uniform_kernel(size: int) -> Tensor:
    """Box blur kernel (size, size), float64, every tap 1 / size²."""
    check_size(size)
    return torch.full((size, size), 1.0 / size**2, dtype=torch.float64)


def check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be an odd integer >= 1, got {size!r}")


@dataclass(frozen=True, repr=False)
class Deblur(SeparableOperator):
    """x (B, C, H, W) -> y (B, C, H, W), the blur by `kernel` (truncated as described above).

    kernel: a separable (rank-1) 2-D kernel of odd size (kh, kw), e.g. `gaussian_kernel(2.0)`.
    cutoff: relative 1-D singular-value cutoff in [0, 1).
    boundary: "zero" or "reflect" (see the module docstring).
    """

    kernel: KernelLike
    cutoff: float = 1e-2
    boundary: Literal["zero", "reflect"] = "zero"
    taps: tuple[tuple[float, ...], tuple[float, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        k = as_kernel(self.kernel)
        if k.ndim != 2 or not torch.isfinite(k).all() or not k.any():
            raise ValueError(f"kernel must be a finite non-zero 2-D array, got shape {k.shape}")
        for n in k.shape:
            check_size(int(n))
        if not 0 <= self.cutoff < 1:
            raise ValueError(f"cutoff must be in [0, 1), got {self.cutoff!r}")
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {self.boundary!r}")
        object.__setattr__(self, "kernel", tuple(map(tuple, k.tolist())))
        object.__setattr__(self, "taps", separate(k))

    def __repr__(self) -> str:
        size = f"{len(self.taps[0])}×{len(self.taps[1])}"
        return f"Deblur(kernel=<{size}>, cutoff={self.cutoff}, boundary={self.boundary!r})"

    def axis_matrix(self, n: int, axis: int) -> Tensor:
        k = torch.tensor(self.taps[axis], dtype=torch.float64)
        if self.boundary == "reflect" and len(k) > n:  # a tap would fold past the far border
            raise ValueError(
                f"the blur kernel ({len(k)} taps) is larger than the image side {n}; "
                "use a smaller kernel or a larger image"
            )
        rows, half = torch.arange(n), len(k) // 2
        M = torch.zeros(n, n, dtype=torch.float64)
        for j, tap in enumerate(k):
            source = rows + j - half  # the pixel tap j of output row r reads
            if self.boundary == "reflect":
                source = torch.where(source < 0, -source - 1, source)
                source = torch.where(source >= n, 2 * n - source - 1, source)
            inside = (source >= 0) & (source < n)
            M[rows[inside], source[inside]] += tap
        return M


def as_kernel(kernel: KernelLike) -> Tensor:
    """Any kernel (a tensor on any device, with or without grad; an array; nested lists) as a
    float64 CPU tensor."""
    if isinstance(kernel, Tensor):
        return kernel.detach().to("cpu", torch.float64)
    return torch.as_tensor(np.asarray(kernel, dtype=np.float64))


def separate(kernel: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(k_0, k_1) with kernel = k_0 k_1ᵀ; ValueError unless the kernel has rank 1."""
    U, s, Vh = torch.linalg.svd(kernel)
    if len(s) > 1 and s[1] > 1e-6 * s[0]:
        raise ValueError(
            "kernel must be separable (rank 1, e.g. an axis-aligned Gaussian or a box); "
            f"its second singular value is {float(s[1] / s[0]):.2e} of the first"
        )
    k0, k1 = U[:, 0] * s[0].sqrt(), Vh[0] * s[0].sqrt()
    sign = -1.0 if k0.sum() < 0 else 1.0
    return tuple((sign * k0).tolist()), tuple((sign * k1).tolist())
