"""Identity: y = x (denoising, where the only degradation is the measurement noise σ_y)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ddnm.operators.base import ImageShape, SVDOperator
from ddnm.operators.linalg import check_image


@dataclass(frozen=True)
class Identity(SVDOperator):
    """x (B, C, H, W) -> y = x; V = U = I, s = 1."""

    def V_t(self, x: Tensor) -> Tensor:
        return check_image("x", x)

    def V(self, c: Tensor) -> Tensor:
        return c

    def U_t(self, y: Tensor) -> Tensor:
        return y

    def U(self, c: Tensor) -> Tensor:
        return c

    def singular_values(self, shape: ImageShape) -> Tensor:
        return torch.ones(1, 1, 1)

    def x_shape(self, y: Tensor) -> ImageShape:
        return tuple(check_image("y", y).shape[1:])  # type: ignore[return-value]
