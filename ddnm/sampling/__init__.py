"""DDNM / DDNM+ samplers: options, the step pieces and the loop."""

from ddnm.sampling.ddnm import Denoiser, StepInfo, posterior_mean, sample
from ddnm.sampling.options import SamplerOptions

__all__ = ["Denoiser", "SamplerOptions", "StepInfo", "posterior_mean", "sample"]
