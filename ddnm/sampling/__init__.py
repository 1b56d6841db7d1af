"""DDNM / DDNM+ samplers: options, the step pieces and the loop."""

from ddnm.sampling.ddnm import Denoiser, StepInfo, sample
from ddnm.sampling.options import SamplerOptions

__all__ = ["Denoiser", "SamplerOptions", "StepInfo", "sample"]
