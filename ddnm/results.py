"""The sampler's x̂ as an image, and how well it explains y (no task spec needed).

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

from ddnm.operators.base import LinearOperator, SVDOperator

PROJECTION_ROUNDS = 200
PROJECTION_TOL = 1e-6  # max |A x - y| on [-1, 1], far under half an 8-bit level (3.9e-3)


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
