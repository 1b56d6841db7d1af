"""Noisy measurements y = A x + n, n ~ N(0, (2 σ_y)² I) (σ_y on the pixel scale [0, 1])."""

from __future__ import annotations

import torch
from torch import Tensor

from ddnm.operators.base import LinearOperator


def measure(
    operator: LinearOperator, x: Tensor, sigma_y: float, generator: torch.Generator | None = None
) -> Tensor:
    """y = A x + 2 σ_y · z, z standard normal in y's layout (×2: x is in [-1, 1]).

    x: (B, C, H, W) in [-1, 1]. sigma_y >= 0, the noise level on the [0, 1] pixel scale; with
    sigma_y = 0 nothing is drawn. generator: the source of z (on x's device), for replays.
    """
    if not sigma_y >= 0:
        raise ValueError(f"sigma_y must be >= 0, got {sigma_y!r}")
    y = operator.A(x)
    if sigma_y == 0:
        return y
    z = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
    return y + 2.0 * sigma_y * z
