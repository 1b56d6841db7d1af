"""From a validated task spec (`contract.spec.TaskSpec`) to library objects: the operator of its
degradation chain and the sampler options. The spec itself is plain data (`contract/`), validated
where it enters.
"""

from __future__ import annotations

from torch import Tensor

from contract.spec import (
    Blur,
    CompressedSensing,
    Degradation,
    Denoise,
    Downsample,
    Grayscale,
    Inpaint,
    Shape,
    TaskSpec,
)
from ddnm import operators
from ddnm.operators.base import LinearOperator
from ddnm.sampling import SamplerOptions


def blur_kernel(d: Blur) -> Tensor:
    """The (size, size) float64 kernel of a blur op, summing to 1."""
    if d.kernel == "uniform":
        return operators.uniform_kernel(d.size or 9)
    if d.kernel == "anisotropic":
        return operators.anisotropic_gaussian_kernel(d.sigma_rows, d.sigma_cols, d.size)
    return operators.gaussian_kernel(d.sigma, d.size)


def degradation_operator(
    d: Degradation, shape: Shape, mask: Tensor | None, seed: int
) -> LinearOperator:
    """The library operator of one op of the chain, acting on images of `shape`."""
    if isinstance(d, Downsample):
        return operators.SuperResolution(d.factor, filter=d.filter)
    if isinstance(d, Blur):
        return operators.Deblur(blur_kernel(d), boundary=d.boundary)
    if isinstance(d, Grayscale):
        return operators.Colorization()
    if isinstance(d, Inpaint):
        if mask is None:
            raise ValueError("inpaint needs a mask")
        return operators.Inpainting(mask)
    if isinstance(d, CompressedSensing):
        return operators.CompressedSensing(
            d.ratio, kind=d.kind, block_size=d.block_size, seed=seed, image_size=shape[1:]
        )
    assert isinstance(d, Denoise)
    return operators.Identity()


def chain_operator(spec: TaskSpec, x_shape: Shape, mask: Tensor | None) -> LinearOperator:
    """A of the whole chain for x of `x_shape`, applied in the order of `spec.degradations`."""
    assert spec.seed is not None
    parts, shape = [], x_shape
    for d in spec.degradations:
        parts.append(degradation_operator(d, shape, mask, spec.seed))
        shape = d.apply(shape)
    return parts[0] if len(parts) == 1 else operators.compose(*parts)


def sampler_options(spec: TaskSpec) -> SamplerOptions:
    """The sampler settings of a spec."""
    return SamplerOptions(
        steps=spec.steps,
        eta=spec.eta,
        sigma_y=spec.sigma_y,
        travel_length=spec.travel.length,
        travel_repeat=spec.travel.repeat,
        clip_x0=spec.clip_x0,
    )
