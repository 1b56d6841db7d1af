"""Small helpers shared by the operators: Householder bases and non-overlapping block layouts."""

from __future__ import annotations

import torch
from torch import Tensor


def householder_basis(u: Tensor) -> Tensor:
    """Orthogonal matrices Q (..., n, n) whose first column is u.

    u: (..., n), each a unit vector or zero (a zero u gives Q = I). Built from the reflection
    H = I - 2 v vᵀ / vᵀv with v = u + sign(u_0) e_0 (stable: vᵀv >= 1), which maps e_0 to
    -sign(u_0) u; the first column is then multiplied by -sign(u_0).
    """
    n = u.shape[-1]
    e0 = torch.zeros_like(u)
    e0[..., 0] = 1.0
    sign = torch.where(u[..., :1] < 0, -1.0, 1.0).to(u)
    v = u + sign * e0
    H = (
        torch.eye(n, dtype=u.dtype, device=u.device)
        - 2.0 * v[..., :, None] * v[..., None, :] / (v * v).sum(-1)[..., None, None]
    )
    flip = torch.ones_like(u)
    flip[..., :1] = -sign
    return H * flip[..., None, :]


def to_blocks(x: Tensor, bh: int, bw: int) -> Tensor:
    """(B, C, H, W) -> (B, C, H/bh, W/bw, bh·bw): each block's pixels in row-major order."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // bh, bh, W // bw, bw).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(B, C, H // bh, W // bw, bh * bw)


def from_blocks(x: Tensor, bh: int, bw: int) -> Tensor:
    """Inverse of `to_blocks`: (B, C, H/bh, W/bw, bh·bw) -> (B, C, H, W)."""
    B, C, nh, nw, _ = x.shape
    x = x.reshape(B, C, nh, nw, bh, bw).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(B, C, nh * bh, nw * bw)


def check_divides(name: str, factor: int, size: tuple[int, ...]) -> None:
    """ValueError unless `factor` divides every entry of `size`."""
    if any(n % factor for n in size):
        raise ValueError(f"{name}={factor} must divide the image size, got {size}")
