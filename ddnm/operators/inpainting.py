"""Inpainting: y = the known pixels of x (mask = 1), all channels; unknown pixels are ignored.

A is the diagonal 0/1 projection x ↦ mask ⊙ x, so A⁺ = A and its SVD is trivial: V = U = I and
s = mask (1 on known pixels, 0 on the null space of missing pixels). y keeps the image layout
(B, C, H, W); A writes zeros at unknown pixels, and A⁺ ignores whatever y holds there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ddnm.operators.base import ImageShape, SVDOperator


def as_mask(mask: Tensor) -> Tensor:
    """A 0/1 mask (any dtype, bool included) of shape (H, W) or (B, 1, H, W) -> a float32 copy
    (B or 1, 1, H, W) that later changes to `mask` do not reach; else ValueError."""
    m = torch.as_tensor(mask)
    if m.ndim == 2:
        m = m[None, None]
    if m.ndim != 4 or m.shape[1] != 1:
        raise ValueError(f"mask must have shape (H, W) or (B, 1, H, W), got {tuple(m.shape)}")
    if not ((m == 0) | (m == 1)).all():
        raise ValueError("mask must be binary: 1 = known pixel, 0 = missing")
    return m.to(torch.float32, copy=True)


@dataclass(frozen=True, eq=False)
class Inpainting(SVDOperator):
    """x (B, C, H, W) -> y = mask ⊙ x (B, C, H, W); mask (H, W) or (B, 1, H, W), 1 = known pixel.

    A (B, 1, H, W) mask with B > 1 holds one mask per sample, and then its singular values have a
    batch dimension (B, 1, H, W).
    """

    mask: Tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask", as_mask(self.mask))

    def _check(self, t: Tensor) -> Tensor:
        Bm, _, H, W = self.mask.shape
        if t.ndim != 4 or t.shape[-2:] != (H, W) or Bm not in (1, t.shape[0]):
            raise ValueError(
                f"x and y must have shape ({'B' if Bm == 1 else Bm}, C, {H}, {W}) to match the "
                f"mask, got {tuple(t.shape)}"
            )
        return t

    def V_t(self, x: Tensor) -> Tensor:
        return self._check(x)

    def V(self, c: Tensor) -> Tensor:
        return self._check(c)

    def U_t(self, y: Tensor) -> Tensor:
        return self._check(y) * self.mask.to(y)

    def U(self, c: Tensor) -> Tensor:
        return self._check(c)

    def singular_values(self, shape: ImageShape) -> Tensor:
        if tuple(shape[1:]) != tuple(self.mask.shape[-2:]):
            raise ValueError(f"image size {tuple(shape[1:])} does not match the mask's")
        return self.mask[0] if self.mask.shape[0] == 1 else self.mask

    def x_shape(self, y: Tensor) -> ImageShape:
        return tuple(self._check(y).shape[1:])  # type: ignore[return-value]
