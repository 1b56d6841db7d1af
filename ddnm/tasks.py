"""From a validated task spec (`contract.spec.TaskSpec`) to library objects and back: the operator
of its degradation chain, the sampler options, and the result as an image. Shared by the worker
and `ddnm restore`; the spec itself is plain data (`contract/`), validated where it enters.

An image holds values in [-1, 1] only, while x̂ from the sampler is unbounded (A x̂ = y fixes its
range-space part, not its range of values). Clipping alone would break A x̂ = y, so with
sigma_y = 0 the result is the image in [-1, 1] nearest to consistency (`into_box`): exactly
consistent when y has a preimage in the box, and as close as the box allows when it has none
(an 8-bit y of an ill-conditioned blur). With noise (sigma_y > 0) y is not consistent data, and
the result is clipped.
"""

from __future__ import annotations

import math

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
from ddnm.operators.base import LinearOperator, SVDOperator
from ddnm.sampling import SamplerOptions

PROJECTION_ROUNDS = 200
PROJECTION_TOL = 1e-4  # max |A x - y| on [-1, 1], well under half an 8-bit level (3.9e-3)


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
        return operators.Deblur(blur_kernel(d))
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


def into_box(operator: SVDOperator, x: Tensor, y: Tensor) -> Tensor:
    """The image in [-1, 1] nearest to consistency: min ||A x - y||^2 over the box, by projected
    gradient with Nesterov momentum (FISTA, Beck & Teboulle 2009) started from clip(x), step
    1 / s_max^2 and A^T = V diag(s) U^T. When all non-zero singular values are equal (box
    downsampling, inpainting, colorization) a plain step is the range-space correction of Alg. 1
    line 5 followed by clipping."""
    s = operator.singular_values(tuple(x.shape[1:])).to(x)  # type: ignore[arg-type]
    step = 1.0 / s.max() ** 2
    x = v = x.clamp(-1.0, 1.0)
    momentum = 1.0
    for _ in range(PROJECTION_ROUNDS):
        if (operator.A(x) - y).abs().max() <= PROJECTION_TOL:
            break
        gradient = operator.V(s * operator.U_t(operator.A(v) - y))  # A^T (A v - y)
        x_next = (v - step * gradient).clamp(-1.0, 1.0)
        momentum_next = (1 + math.sqrt(1 + 4 * momentum**2)) / 2
        v = x_next + (momentum - 1) / momentum_next * (x_next - x)
        x, momentum = x_next, momentum_next
    return x


def in_range(operator: LinearOperator, y: Tensor) -> Tensor:
    """A A⁺ y: y without the entries A ignores (e.g. the unknown pixels of inpainting), so that
    ||A x - y|| measures consistency with the data A can explain."""
    return operator.A(operator.A_pinv(y))


def as_image(operator: LinearOperator, x: Tensor, y: Tensor, sigma_y: float) -> Tensor:
    """The sampler's x (B, C, H, W) as an image in [-1, 1] (see the module docstring)."""
    if sigma_y == 0 and isinstance(operator, SVDOperator):
        x = into_box(operator, x, y)
    return x.clamp(-1.0, 1.0)


def consistency(operator: LinearOperator, x: Tensor, y: Tensor) -> float:
    """||A x - y|| / ||y||: how far x is from explaining the observation y."""
    return float((operator.A(x) - y).norm() / y.norm().clamp_min(1e-12))
