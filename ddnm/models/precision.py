"""Mixed precision as the reference networks do it: a half-precision torso, float32 islands.

guided-diffusion's `convert_to_fp16()` turns only the convolution weights inside the UNet torso
(`input_blocks`, `middle_block`, `output_blocks`) to float16; everything else stays float32. At run
time the torso runs in the half dtype while group norm and the attention softmax are evaluated in
float32, and the result is cast back to the input dtype before the output head. The same recipe is
applied to the DDPM network here, and to bfloat16 as well as float16.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the float32 islands use for a tensor of `dtype`: at least float32."""
    return torch.promote_types(dtype, torch.float32)


class GroupNorm32(nn.GroupNorm):
    """Group norm evaluated in (at least) float32 and returned in the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.to(compute_dtype(x.dtype))).to(x.dtype)


def softmax32(logits: Tensor, dim: int = -1) -> Tensor:
    """Softmax evaluated in (at least) float32 and returned in the input dtype."""
    return torch.softmax(logits.to(compute_dtype(logits.dtype)), dim=dim).to(logits.dtype)


def convert_convs(modules: list[nn.Module], dtype: torch.dtype) -> None:
    """Cast the weight and bias of every convolution inside `modules` to `dtype` (in place)."""
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, nn.Conv1d | nn.Conv2d):
                layer.to(dtype)


def check_torso_dtype(dtype: torch.dtype) -> None:
    if dtype not in (torch.float32, *HALF_DTYPES):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
