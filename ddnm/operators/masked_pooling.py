"""Pooling of the known pixels: y = the f × f block mean of mask ⊙ x (inpainting, then box SR).

This is the spatial part of the old-photo chain inpaint → grayscale → downsample. When the mask cuts
pooling blocks, the reverse product of the parts' pseudo-inverses is not a pseudo-inverse (the
reference's version leaves A x̂ ≠ y). The exact one: block b has a single row (1/f²) · m_b, m_b the
0/1 mask of its pixels with k_b known ones, and rows of different blocks have disjoint supports, so
they are orthogonal. Hence
    s_b = √k_b / f²,   right singular vector m_b / √k_b,   U = I,
    A⁺ y = f² y_b / k_b on the known pixels of block b, 0 on missing ones (and on blocks with
    k_b = 0, whose row is zero and whose y_b is ignored).
Spectral layout: per block, the coefficients in an orthonormal basis of R^{f²} whose first vector
is m_b / √k_b (a Householder basis), placed in the block's pixels in row-major order; s sits at each
block's top-left pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from ddnm.operators.base import ImageShape, SVDOperator
from ddnm.operators.inpainting import as_mask
from ddnm.operators.linalg import check_divides, from_blocks, householder, reflect, to_blocks


@dataclass(frozen=True, eq=False)
class MaskedPooling(SVDOperator):
    """x (B, C, H, W) -> y (B, C, H/f, W/f), y = avg_pool_f(mask ⊙ x).

    mask: (H, W) or (B, 1, H, W), 1 = known pixel. factor: f dividing H and W.
    """

    mask: Tensor
    factor: int
    known: Tensor = field(init=False, repr=False)  # (Bm, 1, H/f, W/f) k_b
    v: Tensor = field(init=False, repr=False)  # (Bm, 1, H/f, W/f, f²) Householder vectors
    flip: Tensor = field(init=False, repr=False)  # (Bm, 1, H/f, W/f, f²)

    def __post_init__(self) -> None:
        mask = as_mask(self.mask)
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 1:
            raise ValueError(f"factor must be an integer >= 1, got {self.factor!r}")
        check_divides("factor", self.factor, tuple(mask.shape[-2:]))
        blocks = to_blocks(mask.double(), self.factor, self.factor)
        known = blocks.sum(-1)
        v, flip = householder(blocks / known.clamp(min=1).sqrt()[..., None])
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "known", known)
        object.__setattr__(self, "v", v)
        object.__setattr__(self, "flip", flip)

    def _blocks(self, t: Tensor) -> Tensor:
        Bm, _, H, W = self.mask.shape
        if t.ndim != 4 or t.shape[-2:] != (H, W) or Bm not in (1, t.shape[0]):
            raise ValueError(f"x must have shape (B, C, {H}, {W}) to match the mask, got {t.shape}")
        return to_blocks(t, self.factor, self.factor)

    def A(self, x: Tensor) -> Tensor:
        self._blocks(x)
        return F.avg_pool2d(x * self.mask.to(x), self.factor)

    def A_pinv(self, y: Tensor) -> Tensor:
        self.x_shape(y)
        f = self.factor
        per_pixel = y * f**2 / self.known.clamp(min=1).to(y)
        return per_pixel.repeat_interleave(f, -2).repeat_interleave(f, -1) * self.mask.to(y)

    def V_t(self, x: Tensor) -> Tensor:
        c = self.flip.to(x) * reflect(self.v.to(x), self._blocks(x))
        return from_blocks(c, self.factor, self.factor)

    def V(self, c: Tensor) -> Tensor:
        x = reflect(self.v.to(c), self.flip.to(c) * self._blocks(c))
        return from_blocks(x, self.factor, self.factor)

    def U_t(self, y: Tensor) -> Tensor:
        self.x_shape(y)
        c = F.pad((y * (self.known > 0).to(y))[..., None], (0, self.factor**2 - 1))
        return from_blocks(c, self.factor, self.factor)

    def U(self, c: Tensor) -> Tensor:
        return self._blocks(c)[..., 0]

    def singular_values(self, shape: ImageShape) -> Tensor:
        if tuple(shape[1:]) != tuple(self.mask.shape[-2:]):
            raise ValueError(f"image size {tuple(shape[1:])} does not match the mask's")
        s = F.pad(self.known.sqrt()[..., None] / self.factor**2, (0, self.factor**2 - 1))
        s = from_blocks(s, self.factor, self.factor)
        return s[0] if s.shape[0] == 1 else s

    def x_shape(self, y: Tensor) -> ImageShape:
        Bm, h, w = self.known.shape[0], *self.known.shape[-2:]
        if y.ndim != 4 or y.shape[-2:] != (h, w) or Bm not in (1, y.shape[0]):
            raise ValueError(f"y must have shape (B, C, {h}, {w}), got {tuple(y.shape)}")
        return (y.shape[1], h * self.factor, w * self.factor)
