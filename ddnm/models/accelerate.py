"""The network's GPU path: what makes one forward fast, kept apart from the sampler arithmetic
(which stays float32 in the run).

    Autocast(eps, dtype)       the forward under torch.autocast (bfloat16 / float16 matmuls and
                               convolutions), ε returned in the caller's dtype
    Bucketed(eps, buckets)     batches padded up to the next bucket size, so that a compiled
                               network (and its CUDA graphs) sees few distinct shapes
    accelerate(network, ...)   channels_last memory format, and torch.compile of the forward
                               ("reduce-overhead": CUDA graphs; "default": kernels only)

Every wrapper keeps the ε-model's contract (`ddnm.sampling.EpsModel`): each sample's ε depends on
its own row only, so padding rows and batch company change nothing but rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ddnm.sampling import EpsModel

CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune"]


@dataclass(frozen=True)
class Autocast:
    """eps under torch.autocast(`dtype`) on `device_type` ("cuda" or "cpu")."""

    eps: EpsModel
    dtype: torch.dtype
    device_type: str

    def __call__(self, x_t: Tensor, t: Tensor, **kwargs: Tensor | None) -> Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.eps(x_t, t, **kwargs)
        return out.to(x_t.dtype)


@dataclass(frozen=True)
class Bucketed:
    """eps on batches padded (by repeating the last sample) up to the smallest bucket >= B;
    batches larger than every bucket run as they are."""

    eps: EpsModel
    buckets: Sequence[int]

    def __call__(self, x_t: Tensor, t: Tensor, **kwargs: Tensor | None) -> Tensor:
        batch = x_t.shape[0]
        size = next((b for b in sorted(self.buckets) if b >= batch), batch)
        if size == batch:
            return self.eps(x_t, t, **kwargs)
        padded = {k: None if v is None else _pad(v, size) for k, v in kwargs.items()}
        return self.eps(_pad(x_t, size), _pad(t, size), **padded)[:batch]


def _pad(value: Tensor, size: int) -> Tensor:
    extra = value[-1:].expand(size - value.shape[0], *value.shape[1:])
    return torch.cat([value, extra])


def accelerate(network: nn.Module, channels_last: bool, compile_mode: CompileMode) -> nn.Module:
    """`network` (in place) in channels_last memory format and with a compiled forward."""
    if channels_last:
        network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if compile_mode != "off":
        network.forward = torch.compile(network.forward, mode=compile_mode, dynamic=False)
    return network
