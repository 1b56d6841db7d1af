"""Sampler options: the knobs of DDNM / DDNM+ (paper Alg. 1-3), validated once at construction."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from ddnm.schedules import check_travel


@dataclass(frozen=True)
class SamplerOptions:
    """Settings of one DDNM / DDNM+ run (integers and reals of any numeric type, stored as int /
    float; anything else, bools included, is a ValueError).

    steps:          number of sampling steps T' (skip = 1000 // steps; paper default 100).
    eta:            share of fresh noise in each step, in [0, 1] (DDNM convention: the total noise
                    level sqrt(1 - alpha_bar') is split into eta * fresh noise and
                    sqrt(1 - eta^2) * predicted eps; 0 is deterministic).
    sigma_y:        standard deviation of the measurement noise in pixel scale [0, 1], as
                    the paper's command line takes it; the sampler works in [-1, 1] and uses
                    2 * sigma_y.
                    0 selects noise-free DDNM (Alg. 1), > 0 DDNM+ (Alg. 2, Eq. 17-19).
    travel_length:  time-travel jump length l in sampling steps (1 with travel_repeat 1: no travel).
    travel_repeat:  how often each stretch is sampled, r (r - 1 re-noising climbs per jump point).
    clip_x0:        clip x_{0|t} to the data range [-1, 1] before the range-space correction
                    (DDPM's `clip_denoised`); the step then uses the ε the clipped estimate
                    implies. Off in the paper's algorithms and the reference; it keeps a weak
                    network's null-space estimate (e.g. the chroma of colorization) from
                    drifting out of the data range.
    """

    steps: int = 100
    eta: float = 0.85
    sigma_y: float = 0.0
    travel_length: int = 1
    travel_repeat: int = 1
    clip_x0: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "travel_length", "travel_repeat"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("eta", "sigma_y"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{name} must be a real number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta!r}")
        if not (math.isfinite(self.sigma_y) and self.sigma_y >= 0.0):
            raise ValueError(f"sigma_y must be a finite number >= 0, got {self.sigma_y!r}")
        if not isinstance(self.clip_x0, bool):
            raise ValueError(f"clip_x0 must be a bool, got {self.clip_x0!r}")
        check_travel(self.steps, self.travel_length, self.travel_repeat)

    @property
    def sigma_y_model(self) -> float:
        """sigma_y on the model's [-1, 1] value scale."""
        return 2.0 * self.sigma_y
