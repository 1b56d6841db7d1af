"""Images in and out of the library: PIL / numpy ↔ tensors, and the value ranges.

Conventions:
    uint8 image     (H, W, 3) numpy array, values 0 .. 255 (what PIL reads and writes).
    tensor image    (B, 3, H, W) float32 in [-1, 1]: x = 2 * u / 255 - 1, the data transform of the
                    DDPM / DDNM networks.
    mask            (H, W) bool numpy array, True = known (kept) pixel, False = missing.
Going back, values are clipped to [-1, 1] and rounded to the nearest of the 256 levels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (grey and palette images are expanded,
    an alpha channel is composited onto white)."""
    with Image.open(path) as image:
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
        return np.asarray(image.convert("RGB"))


def save_image(image: np.ndarray | Tensor, path: str | Path) -> None:
    """Write a (H, W, 3) uint8 array, or a (1, 3, H, W) / (3, H, W) tensor in [-1, 1], as an
    image file (format from the suffix)."""
    array = image if isinstance(image, np.ndarray) else to_uint8(image)
    Image.fromarray(array).save(path)


def to_tensor(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 in [0, 255] -> (1, 3, H, W) float32 in [-1, 1]."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be a (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
    u = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()
    return (u / 127.5 - 1.0).unsqueeze(0)


def to_uint8(x: Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) tensor in [-1, 1] -> (H, W, 3) uint8 (clipped, rounded)."""
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"x must hold a single image, got batch size {x.shape[0]}")
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"x must have shape (1, 3, H, W) or (3, H, W), got {tuple(x.shape)}")
    u = ((x.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return u.to(torch.uint8).permute(1, 2, 0).numpy()


def load_mask(path: str | Path) -> np.ndarray:
    """Read a mask image as (H, W) bool: pixels brighter than mid-grey are known (True)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) >= 128


def mask_to_tensor(mask: np.ndarray) -> Tensor:
    """(H, W) bool -> (H, W) float32 with 1 = known, 0 = missing."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D array, got shape {mask.shape}")
    return torch.from_numpy(mask.astype(np.float32))
