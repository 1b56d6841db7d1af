"""What a sampler run asks of the network, and the run's own type.

A run (`ddnm.sampling.ddnm.run`) is a generator: each denoising transition yields a `NetCall`
and is sent ε for it; its return value is the restored x. Whoever drives the run owns the network
call (`ddnm.sampling.batching`), so one loop serves a single restore, the K draws of a job in one
batch, and later the windows of a tiling wave and many jobs' steps in one forward.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

EpsModel = Callable[..., Tensor]
"""ε_θ(x_t, t) -> ε, or ε_θ(x_t, t, labels=..., scales=...) for requests that carry them.

x_t (B, C, H, W); t (B,) integer-valued timesteps in x_t's dtype; labels (B,) int64 class labels;
scales (B,) classifier-guidance scales s >= 0 (float). Returns ε (B, C, H, W), any dtype (cast to
x_t's by the run). A plain `(x_t, t)` callable serves runs without labels or scales; the model
adapters (`ddnm.models.as_denoiser`) take both per call and keep only ε of a learned-variance
network."""


@dataclass(frozen=True)
class NetCall:
    """One network request: ε_θ for B samples, each with its own timestep (and label, scale)."""

    x_t: Tensor  # (B, C, H, W)
    t: Tensor  # (B,) integer-valued timesteps, x_t's dtype
    labels: Tensor | None = None  # (B,) int64 class labels
    scales: Tensor | None = None  # (B,) classifier-guidance scales

    def __post_init__(self) -> None:
        batch = self.x_t.shape[0]
        for name in ("t", "labels", "scales"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (batch,):
                raise ValueError(f"NetCall.{name} must have shape ({batch},), got {value.shape}")

    @property
    def batch(self) -> int:
        return int(self.x_t.shape[0])

    def evaluate(self, model: EpsModel) -> Tensor:
        """ε from `model`, passing labels and scales only when the request has them."""
        if self.labels is None and self.scales is None:
            return model(self.x_t, self.t)
        return model(self.x_t, self.t, labels=self.labels, scales=self.scales)


Run = Generator[NetCall, Tensor, Tensor]
"""A sampler run: yields requests, is sent ε of each request's shape, returns x (B, C, H, W)."""


def join(calls: Sequence[NetCall]) -> NetCall:
    """The requests of several runs as one batch (in order). Where some carry labels or scales
    and others do not, the others get label 0 and scale 0: a request without them is an unguided
    sample of an unconditional network, which reads neither (the ε-model guides only samples of
    scale > 0)."""
    fields: dict[str, Tensor | None] = {}
    for name, dtype in (("labels", torch.long), ("scales", torch.float32)):
        values = [getattr(c, name) for c in calls]
        if all(v is None for v in values):
            fields[name] = None
            continue
        fields[name] = torch.cat(
            [
                torch.zeros(c.batch, dtype=dtype, device=c.x_t.device) if v is None else v
                for c, v in zip(calls, values, strict=True)
            ]
        )
    return NetCall(torch.cat([c.x_t for c in calls]), torch.cat([c.t for c in calls]), **fields)
