"""Image quality metrics: PSNR and SSIM.

Both take two images of the same shape, (H, W) or (H, W, C) arrays (uint8 images as read by
`ddnm.imaging.load_image`, or floats), and the `data_range` L of their values (255 for uint8).

SSIM is the standard one of Wang et al. 2004 (IEEE TIP 13(4)): an 11 x 11 Gaussian window with
sigma = 1.5, K1 = 0.01, K2 = 0.03, population (co)variances, averaged over the positions where the
window lies wholly inside the image and then over the channels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # window of 2 * 5 + 1 = 11 taps (sigma 1.5 truncated at 3.5 sigma)
K1, K2 = 0.01, 0.03


def _as_hwc(a: np.ndarray, b: np.ndarray) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"images must be (H, W) or (H, W, C), got shape {a.shape}")
    ta, tb = (torch.from_numpy(np.asarray(v, dtype=np.float64)) for v in (a, b))
    return (ta[..., None], tb[..., None]) if a.ndim == 2 else (ta, tb)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio 10 log10(L^2 / MSE) in dB (inf for identical images)."""
    ta, tb = _as_hwc(a, b)
    mse = float(torch.mean((ta - tb) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window() -> Tensor:
    """(1, 1, 11) normalised 1-D Gaussian taps, sigma 1.5."""
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    w = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return (w / w.sum()).view(1, 1, -1)


def _local_mean(x: Tensor) -> Tensor:
    """Gaussian-weighted mean over the window, 'valid' positions only. x: (C, 1, H, W)."""
    w = _gaussian_window()
    x = F.conv2d(x, w.view(1, 1, 1, -1))
    return F.conv2d(x, w.view(1, 1, -1, 1))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean structural similarity (Wang et al. 2004, Eq. 13) of two images."""
    ta, tb = _as_hwc(a, b)
    if min(ta.shape[:2]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"images must be at least 11 x 11 for SSIM, got {tuple(ta.shape[:2])}")
    x, y = (t.permute(2, 0, 1).unsqueeze(1) for t in (ta, tb))  # (C, 1, H, W)
    mu_x, mu_y = _local_mean(x), _local_mean(y)
    var_x = _local_mean(x * x) - mu_x**2
    var_y = _local_mean(y * y) - mu_y**2
    cov_xy = _local_mean(x * y) - mu_x * mu_y
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return float(s.mean(dim=(1, 2, 3)).mean())
