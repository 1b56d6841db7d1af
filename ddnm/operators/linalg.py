"""Small helpers shared by the operators: Householder bases, non-overlapping block layouts and
shape checks."""

from __future__ import annotations

import torch
from torch import Tensor


def householder(u: Tensor) -> tuple[Tensor, Tensor]:
    """The orthogonal Q = H · diag(flip) whose first column is u, in implicit form (v, flip).

    u: (..., n), each a unit vector or zero (a zero u gives Q = I). H = I - 2 v vᵀ is the
    reflection with v ∝ u + sign(u_0) e_0 (stable: never near zero); it maps e_0 to -sign(u_0) u,
    so flip = (-sign(u_0), 1, …, 1). Returns v (..., n) of unit norm and flip (..., n).
    """
    sign = torch.where(u[..., :1] < 0, -1.0, 1.0).to(u)
    v = u.clone()
    v[..., :1] += sign
    flip = torch.ones_like(u)
    flip[..., :1] = -sign
    return v / v.norm(dim=-1, keepdim=True), flip


def reflect(v: Tensor, x: Tensor) -> Tensor:
    """H x = x - 2 v (vᵀ x) over the last dim (v of unit norm)."""
    return x - 2.0 * v * (v * x).sum(-1, keepdim=True)


def householder_basis(u: Tensor) -> Tensor:
    """The matrices Q (..., n, n) of `householder(u)`: orthogonal, first column u."""
    v, flip = householder(u)
    eye = torch.eye(u.shape[-1], dtype=u.dtype, device=u.device)
    return (eye - 2.0 * v[..., :, None] * v[..., None, :]) * flip[..., None, :]


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


def check_image(name: str, t: Tensor) -> Tensor:
    """t, or ValueError unless it is a batch of images (B, C, H, W)."""
    if t.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(t.shape)}")
    return t


def check_divides(name: str, factor: int, size: tuple[int, ...]) -> None:
    """ValueError unless `factor` divides every entry of `size`."""
    if any(n % factor for n in size):
        raise ValueError(f"{name}={factor} must divide the image size, got {size}")
