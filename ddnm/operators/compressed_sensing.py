"""Compressed sensing: y = a subset of the orthonormal Walsh-Hadamard coefficients of x.

walsh_hadamard: per channel, the row-major pixel vector (n = H·W, a power of two) is transformed by
    H_n / √n, H_n the Hadamard matrix in natural (Sylvester) order, H_2n = [[H_n, H_n], [H_n, -H_n]]
    (fast transform, never a dense n × n matrix); y keeps the coefficients at indices
    perm[0 : m], m = ⌊ratio · n⌋, the same for every channel: y (B, C, m).
block: the same for every non-overlapping b × b block (row-major pixels, perm over b² entries):
    y (B, C, H/b, W/b, m) with m = ⌊ratio · b²⌋.
The rows kept are orthonormal, so s = 1 on them: in the spectral layout the coefficients of a
block sit in the block's pixels in the order of perm (coefficient k at row-major position k), and
the first m positions of every block carry s = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ddnm.operators.base import ImageShape, SVDOperator
from ddnm.operators.linalg import from_blocks, to_blocks

KINDS = ("walsh_hadamard", "block")


def fwht(x: Tensor) -> Tensor:
    """Unnormalised Walsh-Hadamard transform H_n x over the last dim (n a power of two)."""
    n = x.shape[-1]
    y = x.reshape(-1, 1, n)
    while y.shape[-1] > 1:  # H_2k [a; b] = [H_k (a + b); H_k (a - b)], recursing on both halves
        a, b = y.chunk(2, dim=-1)
        y = torch.stack([a + b, a - b], dim=2).flatten(1, 2)
    return y.reshape(x.shape)


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@dataclass(frozen=True, eq=False)
class CompressedSensing(SVDOperator):
    """Keep ⌊ratio · n⌋ Walsh-Hadamard coefficients chosen by `perm` (see module docstring).

    ratio: in (0, 1]. kind: "walsh_hadamard" (whole image) or "block" (b × b blocks,
    b = block_size, a power of two). perm: a permutation of range(n) (n = H·W, or b² for blocks);
    drawn from `seed` with a torch.Generator when not given, and stored on the object.
    image_size: int or (H, W); the whole-image kind assumes a square image of n = len(perm) pixels
    unless it is given (one of perm, image_size is required there); the block kind learns the
    size from x or y, and checks x against image_size when it is given.
    """

    ratio: float
    kind: Literal["walsh_hadamard", "block"] = "walsh_hadamard"
    perm: Tensor | None = None
    seed: int = 0
    block_size: int = 32
    image_size: int | tuple[int, int] | None = None
    block: tuple[int, int] = field(init=False)  # the transformed block (bh, bw)
    m: int = field(init=False)  # coefficients kept per block

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        size = self.image_size
        if size is not None:
            size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if self.kind == "block":
            block = (self.block_size, self.block_size)
            if not is_power_of_two(self.block_size):
                raise ValueError(f"block_size must be a power of two, got {self.block_size!r}")
        elif size is not None:
            block = size
        elif self.perm is not None:
            side = math.isqrt(len(self.perm))
            if side * side != len(self.perm):
                raise ValueError(
                    f"len(perm)={len(self.perm)} is not a square image; pass image_size"
                )
            block = (side, side)
        else:
            raise ValueError("walsh_hadamard needs the image size: pass image_size or perm")
        n = block[0] * block[1]
        if not is_power_of_two(n):
            raise ValueError(f"n = H·W must be a power of two, got {block[0]}·{block[1]} = {n}")
        object.__setattr__(self, "block", block)
        object.__setattr__(self, "image_size", block if self.kind == "walsh_hadamard" else size)
        object.__setattr__(self, "perm", self._permutation(n))
        object.__setattr__(self, "m", math.floor(self.ratio * n))
        if self.m < 1:
            raise ValueError(f"ratio={self.ratio} keeps no coefficient of n = {n}; use >= 1/{n}")

    def _permutation(self, n: int) -> Tensor:
        if self.perm is None:
            return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        perm = torch.as_tensor(self.perm).to("cpu", torch.long, copy=True)
        if perm.shape != (n,) or not torch.equal(perm.sort().values, torch.arange(n)):
            raise ValueError(f"perm must be a permutation of range({n}), got shape {perm.shape}")
        return perm

    @property
    def n(self) -> int:
        return self.block[0] * self.block[1]

    def _perm(self, device: torch.device) -> Tensor:
        assert self.perm is not None  # drawn in __post_init__ when not given
        return self.perm.to(device)

    def _to_blocks(self, x: Tensor) -> Tensor:
        (bh, bw), (H, W) = self.block, x.shape[-2:]
        expected = self.image_size
        if x.ndim != 4 or H % bh or W % bw or (expected is not None and expected != (H, W)):
            size = f"{bh}×{bw}" if expected else f"a multiple of {bh}×{bw}"
            raise ValueError(f"x must be (B, C, H, W) with H×W {size}, got {tuple(x.shape)}")
        return to_blocks(x, bh, bw)

    def V_t(self, x: Tensor) -> Tensor:
        c = fwht(self._to_blocks(x)) / math.sqrt(self.n)
        return from_blocks(c[..., self._perm(c.device)], *self.block)

    def V(self, c: Tensor) -> Tensor:
        inverse = torch.argsort(self._perm(c.device))
        x = fwht(self._to_blocks(c)[..., inverse]) / math.sqrt(self.n)
        return from_blocks(x, *self.block)

    def U_t(self, y: Tensor) -> Tensor:
        C, H, W = self.x_shape(y)
        y = y.reshape(y.shape[0], C, H // self.block[0], W // self.block[1], self.m)
        return from_blocks(F.pad(y, (0, self.n - self.m)), *self.block)

    def U(self, c: Tensor) -> Tensor:
        y = self._to_blocks(c)[..., : self.m]
        return y.flatten(2) if self.kind == "walsh_hadamard" else y

    def singular_values(self, shape: ImageShape) -> Tensor:
        grid = (shape[1] // self.block[0], shape[2] // self.block[1])
        kept = (torch.arange(self.n) < self.m).double().expand(1, 1, *grid, -1)
        return from_blocks(kept, *self.block)[0]

    def x_shape(self, y: Tensor) -> ImageShape:
        if self.kind == "walsh_hadamard" and y.ndim == 3 and y.shape[-1] == self.m:
            return (y.shape[1], *self.block)
        if self.kind == "block" and y.ndim == 5 and y.shape[-1] == self.m:
            return (y.shape[1], y.shape[2] * self.block[0], y.shape[3] * self.block[1])
        layout = "(B, C, m)" if self.kind == "walsh_hadamard" else "(B, C, H/b, W/b, m)"
        raise ValueError(f"y must have shape {layout} with m = {self.m}, got {tuple(y.shape)}")
