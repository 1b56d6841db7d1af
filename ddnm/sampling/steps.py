"""The pieces of one DDNM / DDNM+ step, each a few lines, named after the paper.

Notation (DDNM paper, Sec. 3):
    x_t            current state (B, C, H, W)
    eps            network prediction of the noise in x_t
    alpha_bar      ᾱ_t of the current level t; alpha_bar_next ᾱ_{t'} of the level stepped to
    x0             x_{0|t}, the raw clean-image estimate
    x0_hat         x̂_{0|t}, the estimate after the range-space correction
    a_t, sigma_t   coefficient of x̂_{0|t} and total noise std of the next state:
                   a_t = sqrt(ᾱ_{t'}), sigma_t = sqrt(1 - ᾱ_{t'})
    sigma_y        measurement noise std on the [-1, 1] scale
    lam, gamma     λ_t and γ_t of DDNM+ (Eq. 19), per singular value when the operator has an SVD

Coefficients are 0-dim tensors (or tensors broadcastable to x) of x's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddnm.operators.base import LinearOperator, SVDOperator, pinv_values


def predict_x0(x_t: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """x_{0|t} = (x_t - sqrt(1 - ᾱ_t) eps) / sqrt(ᾱ_t) (Alg. 1 line 4); not clamped."""
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def clip_x0(x_t: Tensor, x0: Tensor, alpha_bar: Tensor) -> tuple[Tensor, Tensor]:
    """x_{0|t} clipped to the data range [-1, 1] (DDPM's `clip_denoised`), and the ε it implies,
    eps = (x_t - sqrt(ᾱ_t) x_{0|t}) / sqrt(1 - ᾱ_t), so that the step (Alg. 1 line 6) stays
    the one of a network that had predicted the clipped estimate."""
    x0 = x0.clamp(-1.0, 1.0)
    return x0, (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()


def rectify_x0(operator: LinearOperator, x0: Tensor, y: Tensor) -> Tensor:
    """Range-space correction of DDNM (Alg. 1 line 5): x̂0 = x0 - A⁺(A x0 - y), so A x̂0 = y."""
    return x0 - operator.A_pinv(operator.A(x0) - y)


def ddnm_plus_scalings(
    a_t: Tensor, sigma_t: Tensor, sigma_y: float, s: Tensor
) -> tuple[Tensor, Tensor]:
    """λ_t and γ_t of DDNM+ (Eq. 19) for each singular value s (appendix I).

    The noise of A⁺y along a singular direction is sigma_y / s. The correction is taken whole
    (λ = 1) when the step's own noise sigma_t can absorb a_t * sigma_y / s, otherwise scaled to
    λ = sigma_t s / (a_t sigma_y); γ = sigma_t² - (a_t λ sigma_y / s)² is the noise variance left to
    add, so that (a_t λ sigma_y / s)² + γ = sigma_t². Null-space directions (s = 0) get λ = 0 and
    γ = sigma_t².
    """
    noise_in_range = a_t * sigma_y * pinv_values(s)  # a_t sigma_y / s, 0 on the null space
    lam = torch.where(
        sigma_t >= noise_in_range,
        torch.ones_like(s),
        sigma_t / torch.where(noise_in_range > 0, noise_in_range, torch.ones_like(s)),
    )
    lam = torch.where(s > 0, lam, torch.zeros_like(s))
    gamma = sigma_t**2 - (lam * noise_in_range) ** 2
    return lam, gamma.clamp_min(0)


def rectify_x0_plus(
    operator: LinearOperator, x0: Tensor, y: Tensor, a_t: Tensor, sigma_t: Tensor, sigma_y: float
) -> tuple[Tensor, Tensor]:
    """DDNM+ correction x̂0 = x0 - Σ_t A⁺(A x0 - y) (Eq. 17) with Σ_t = V diag(λ) Vᵀ.

    Returns (x̂0, gamma) with gamma broadcastable to x0 in the spectral layout of an SVD operator,
    or a scalar for the scalar form (operators without an SVD; s = 1 on the range space).
    """
    residual = operator.A(x0) - y
    if isinstance(operator, SVDOperator):
        s = operator.singular_values(tuple(x0.shape[1:])).to(x0)  # type: ignore[arg-type]
        lam, gamma = ddnm_plus_scalings(a_t, sigma_t, sigma_y, s)
        return x0 - operator.V(lam * pinv_values(s) * operator.U_t(residual)), gamma
    lam, gamma = ddnm_plus_scalings(a_t, sigma_t, sigma_y, torch.ones_like(a_t))
    return x0 - lam * operator.A_pinv(residual), gamma


def shape_noise(operator: LinearOperator, noise: Tensor, sigma_t: Tensor, gamma: Tensor) -> Tensor:
    """Scale the step noise (std sigma_t) to variance γ along the range space (Eq. 18, Φ_t).

    With an SVD the scaling is exact per singular direction: V diag(sqrt(γ) / sigma_t) Vᵀ noise;
    otherwise the range-space part A⁺A noise is scaled by sqrt(γ) / sigma_t and the null-space part
    keeps its full variance.
    """
    if sigma_t.item() == 0:
        return noise
    scale = gamma.sqrt() / sigma_t
    if isinstance(operator, SVDOperator):
        return operator.V(scale * operator.V_t(noise))
    range_part = operator.project(noise)
    return noise - range_part + scale * range_part


def step_noise_terms(
    eps: Tensor, z: Tensor, alpha_bar_next: Tensor, eta: float
) -> tuple[Tensor, Tensor]:
    """(a_t x̂0 coefficient, noise term) of the DDNM update (Alg. 1 line 6, DDNM's eta convention).

    x_{t'} = sqrt(ᾱ') x̂0 + c1 z + c2 eps,
    c1 = sqrt(1 - ᾱ') eta,  c2 = sqrt(1 - ᾱ') sqrt(1 - eta²).
    """
    sigma_t = (1 - alpha_bar_next).sqrt()
    c1 = sigma_t * eta
    c2 = sigma_t * (1 - eta**2) ** 0.5
    return alpha_bar_next.sqrt(), c1 * z + c2 * eps


def renoise(x0_hat: Tensor, z: Tensor, alpha_bar_next: Tensor) -> Tensor:
    """Time travel (Sec. 3.4): x_{t+l} ~ q(x_{t+l} | x̂_{0|t}) = sqrt(ᾱ) x̂0 + sqrt(1 - ᾱ) z."""
    return alpha_bar_next.sqrt() * x0_hat + (1 - alpha_bar_next).sqrt() * z
