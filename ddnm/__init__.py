"""ddnm: zero-shot image restoration with Denoising Diffusion Null-space Models (DDNM / DDNM+).

A pure PyTorch library: schedules, degradation operators, the sampler, Mask-Shift tiling and the
networks. No web framework, task queue or environment variables are used here.
"""

__version__ = "0.1.0"
