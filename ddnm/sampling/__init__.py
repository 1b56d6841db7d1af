"""DDNM / DDNM+ samplers: options, the step pieces, the run and its drivers."""

from ddnm.sampling.batching import Batcher, finish, lockstep, spawn
from ddnm.sampling.calls import EpsModel, NetCall, Run
from ddnm.sampling.ddnm import (
    Pin,
    StepInfo,
    mean_of_draws,
    posterior_mean,
    posterior_mean_run,
    run,
    sample,
    step,
)
from ddnm.sampling.options import SamplerOptions

__all__ = [
    "Batcher",
    "EpsModel",
    "NetCall",
    "Pin",
    "Run",
    "SamplerOptions",
    "StepInfo",
    "finish",
    "lockstep",
    "mean_of_draws",
    "posterior_mean",
    "posterior_mean_run",
    "run",
    "sample",
    "spawn",
    "step",
]
