"""Noise schedules and the timestep sequences the DDNM sampler walks.

Notation (DDPM / DDNM papers):
    beta_t       variance of the forward step t-1 -> t, linear from 1e-4 to 0.02 over T = 1000
    alpha_bar_t  prod_{s<=t} (1 - beta_s); alpha_bar(-1) = 1 (the clean image)

`Schedule.alpha_bar` is indexed by ``t + 1`` so that ``t = -1`` (after the last step) is index 0.
The values are formed in float32 exactly as the reference implementation forms them: float64 betas
rounded to float32, ``1 - beta`` in float32 and a float32 cumulative product.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Schedule:
    """A discrete diffusion schedule.

    betas: (T,) float64, beta_t for t = 0 .. T-1.
    alpha_bar_table: (T + 1,) float32; entry k is alpha_bar(t = k - 1), entry 0 is exactly 1.
    """

    betas: torch.Tensor
    alpha_bar_table: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def alpha_bar_table_for(self, dtype: torch.dtype) -> torch.Tensor:
        """The (T + 1,) ᾱ table as the reference forms it in `dtype`: for float64 the float64
        cumulative product of 1 - beta (the reference's float64 runs), else the float32 table
        (cast to `dtype`)."""
        if dtype == torch.float64:
            one = torch.ones(1, dtype=torch.float64)
            return torch.cat([one, torch.cumprod(1.0 - self.betas, dim=0)])
        return self.alpha_bar_table.to(dtype)

    def alpha_bar(self, t: int) -> float:
        """alpha_bar(t) for t in [-1, T-1], as a Python float of the float32 table value."""
        if not -1 <= t < self.num_timesteps:
            raise ValueError(f"t must be in [-1, {self.num_timesteps - 1}], got {t}")
        return float(self.alpha_bar_table[t + 1])


def linear_schedule(
    num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Schedule:
    """The linear beta schedule of DDPM (Ho et al. 2020), used by every model DDNM ships with."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    # numpy's linspace, as the reference: torch's differs in the last bit of some entries
    betas = torch.from_numpy(np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64))
    one_minus_beta = 1.0 - torch.cat([torch.zeros(1), betas.float()])
    return Schedule(betas=betas, alpha_bar_table=torch.cumprod(one_minus_beta, dim=0))


def check_travel(steps: int, travel_length: int, travel_repeat: int) -> None:
    """Raise ValueError unless (travel_length, travel_repeat) is a valid time-travel setting."""
    if travel_repeat < 1 or (travel_repeat > 1 and steps < 2):
        allowed = ">= 1" if steps >= 2 else "1 when steps = 1 (no step to travel back to)"
        raise ValueError(f"travel_repeat must be {allowed}, got {travel_repeat!r}")
    if travel_length < 1 or (travel_repeat > 1 and travel_length >= steps):
        raise ValueError(
            f"travel_length must be in [1, steps - 1] = [1, {steps - 1}], got {travel_length!r}"
        )


def _raw_jumps(steps: int, travel_length: int, travel_repeat: int) -> list[int]:
    """Raw (unscaled) time sequence: descend from steps - 1 to -1, and at every jump point
    j in 0, L, 2L, ... below steps - L climb back L units, travel_repeat - 1 times."""
    repeats_left = {j: travel_repeat - 1 for j in range(0, steps - travel_length, travel_length)}
    t, seq = steps - 1, [steps - 1]
    while t >= 0:
        t -= 1
        seq.append(t)
        if repeats_left.get(t, 0) > 0:
            repeats_left[t] -= 1
            for _ in range(travel_length):
                t += 1
                seq.append(t)
    return seq


def timestep_pairs(
    steps: int, travel_length: int = 1, travel_repeat: int = 1, num_timesteps: int = 1000
) -> list[tuple[int, int]]:
    """Transitions (t, t_next) of a DDNM run with `steps` sampling steps and time travel.

    skip = num_timesteps // steps; the first timestep is (steps - 1) * skip and the last transition
    is 0 -> -1. A pair with t_next > t is a time-travel (re-noising) transition: no network call.
    With travel_length = travel_repeat = 1 there is no time travel.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    check_travel(steps, travel_length, travel_repeat)
    skip = num_timesteps // steps
    raw = _raw_jumps(steps, travel_length, travel_repeat)
    scaled = [max(r * skip, -1) for r in raw]
    return list(itertools.pairwise(scaled))
