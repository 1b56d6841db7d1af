"""The DDNM / DDNM+ sampling loop (paper Alg. 1-3).

Paper → code:
    Alg. 1 line 4, x_{0|t} from ε_θ(x_t, t)          steps.predict_x0
    (option clip_x0) x_{0|t} clipped to [-1, 1]      steps.clip_x0
    Alg. 1 line 5, x̂_{0|t} = x_{0|t} - A⁺(A x_{0|t} - y)  steps.rectify_x0          (sigma_y = 0)
    Eq. 17, x̂_{0|t} = x_{0|t} - Σ_t A⁺(A x_{0|t} - y)   steps.rectify_x0_plus     (sigma_y > 0)
    Eq. 18-19, Φ_t = γ_t, λ_t (per singular value)       steps.ddnm_plus_scalings, steps.shape_noise
    Alg. 1 line 6, x_{t-1} from x̂_{0|t} (DDIM with η)    steps.step_noise_terms
    Sec. 3.4 / Alg. 3, time travel                       steps.renoise on a climbing transition

Randomness: x_T and exactly one standard-normal draw of x's shape per transition (time-travel
transitions and the final 0 → -1 step included, used or not), in that order, from `step_noise`
when given, else from `generator`. A run is thus replayable from (x_T, step_noise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ddnm.operators.base import LinearOperator
from ddnm.sampling import steps as S
from ddnm.sampling.options import SamplerOptions
from ddnm.schedules import Schedule, timestep_pairs

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""ε_θ(x_t, t): x_t (B, C, H, W), t (B,) integer-valued timesteps in x_t's dtype (float32 in a
float32 run) -> ε (B, C, H, W), or (B, 2C, H, W) for networks with a learned variance (the first C
channels are ε); any dtype, cast to x_t's."""


@dataclass(frozen=True)
class StepInfo:
    """Progress of a run, handed to the callback after every transition.

    step: 1-based index of the transition just done, of `total`; t -> t_next its levels
    (t_next > t for a time-travel transition); x_t the new state; x0 the latest corrected estimate
    x̂_{0|t} (B, C, H, W) in about [-1, 1].
    """

    step: int
    total: int
    t: int
    t_next: int
    x_t: Tensor
    x0: Tensor


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    schedule: Schedule,
    operator: LinearOperator,
    y: Tensor,
    options: SamplerOptions,
    *,
    x_T: Tensor | None = None,
    step_noise: Iterable[Tensor] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
) -> Tensor:
    """Restore x from y = A x (+ n) with DDNM (sigma_y = 0) or DDNM+ (sigma_y > 0).

    y: the measurement in the operator's layout (e.g. (B, C, H/f, W/f) for super-resolution) on
    the [-1, 1] value scale, batch B; checked against the operator (ValueError if it does not fit).
    x_T: (B, C, H, W) standard-normal initial state; drawn from `generator` when None.
    step_noise: per-transition standard-normal draws of shape (B, C, H, W), consumed in order
    (any iterable of tensors or arrays, e.g. a list or a (transitions, B, C, H, W) tensor).
    Precision: the run computes in the widest floating dtype of y and x_T, at least float32, on
    y's device; draws from `generator` are made in float32, so float32 and float64 runs with the
    same seed use the same noise. ᾱ comes from `Schedule.alpha_bar_table_for` in that dtype.
    Returns x0 (B, C, H, W), unclamped (about [-1, 1]); with sigma_y = 0, A x0 = y up to rounding.
    An exception raised by `callback` stops the run and propagates (e.g. to cancel a job).
    Runs without autograd; a denoiser that needs gradients (classifier guidance) enables them
    locally.
    """
    if not operator.exact_pinv:
        why = getattr(operator, "description", type(operator).__name__)
        raise ValueError(
            f"operator must have an exact pseudo-inverse (DDNM needs A A⁺ A = A): {why}"
        )
    pairs = timestep_pairs(
        options.steps, options.travel_length, options.travel_repeat, schedule.num_timesteps
    )
    y, x_T = _inputs(operator, y, x_T, generator)
    draws = _draws(step_noise, x_T, generator)
    alpha_bar = schedule.alpha_bar_table_for(y.dtype).to(y.device)

    x_t, x0_hat = x_T, x_T
    for k, (t, t_next) in enumerate(pairs, start=1):
        z = next(draws)
        if t_next > t:  # time travel: re-noise the latest corrected estimate back to t_next
            x_t = S.renoise(x0_hat, z, alpha_bar[t_next + 1])
        else:
            x_t, x0_hat = _denoise(denoiser, operator, y, options, x_t, t, z, alpha_bar, t_next)
        if callback is not None:
            callback(StepInfo(k, len(pairs), t, t_next, x_t, x0_hat))
    return x_t


def posterior_mean(
    denoiser: Denoiser,
    schedule: Schedule,
    operator: LinearOperator,
    y: Tensor,
    options: SamplerOptions,
    samples: int,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
) -> Tensor:
    """The mean of `samples` independent DDNM restorations of y.

    One run of `sample` draws one x from the posterior p(x | y); its expected squared error is
    that of the posterior mean plus the posterior variance. The mean of K draws estimates
    E[x | y], the restoration of least expected squared error (highest expected PSNR), trading
    detail the data do not determine (e.g. the hue of a grey surface in colorization) for its
    average. A is linear, so A of the mean is y whenever each draw is consistent.

    The draws run one after another, each a `sample` run taking its randomness from `generator`
    in turn (an operator may hold per-image state, e.g. a batch of masks, so they are not
    batched); samples = 1 is `sample`. The callback sees steps counted over all runs (total =
    samples * transitions of one run). Returns (B, C, H, W).
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    draws = [
        sample(
            denoiser,
            schedule,
            operator,
            y,
            options,
            generator=generator,
            callback=None if callback is None else _counted(callback, k, samples),
        )
        for k in range(samples)
    ]
    return torch.stack(draws).mean(dim=0)


def _counted(
    callback: Callable[[StepInfo], None], run: int, runs: int
) -> Callable[[StepInfo], None]:
    """The callback of run `run` of `runs`, with steps counted over all runs."""

    def relay(info: StepInfo) -> None:
        callback(replace(info, step=run * info.total + info.step, total=runs * info.total))

    return relay


def _denoise(
    denoiser: Denoiser,
    operator: LinearOperator,
    y: Tensor,
    options: SamplerOptions,
    x_t: Tensor,
    t: int,
    z: Tensor,
    alpha_bar: Tensor,
    t_next: int,
) -> tuple[Tensor, Tensor]:
    """One denoising transition t -> t_next < t. Returns (x_{t_next}, x̂_{0|t})."""
    eps = _eps(denoiser, x_t, t)
    x0 = S.predict_x0(x_t, eps, alpha_bar[t + 1])
    if options.clip_x0:
        x0, eps = S.clip_x0(x_t, x0, alpha_bar[t + 1])
    a_t, noise = S.step_noise_terms(eps, z, alpha_bar[t_next + 1], options.eta)
    if options.sigma_y == 0:
        x0_hat = S.rectify_x0(operator, x0, y)
    else:
        sigma_t = (1 - alpha_bar[t_next + 1]).sqrt()
        x0_hat, gamma = S.rectify_x0_plus(operator, x0, y, a_t, sigma_t, options.sigma_y_model)
        noise = S.shape_noise(operator, noise, sigma_t, gamma)
    return a_t * x0_hat + noise, x0_hat


def _eps(denoiser: Denoiser, x_t: Tensor, t: int) -> Tensor:
    """ε_θ(x_t, t) with t as a (B,) tensor of x_t's dtype (float32 in a float32 run, as the
    reference); the result in x_t's dtype; a learned-variance output keeps ε only."""
    t_batch = torch.full((x_t.shape[0],), float(t), device=x_t.device, dtype=x_t.dtype)
    out = denoiser(x_t, t_batch).to(x_t)
    channels = x_t.shape[1]
    if out.shape[1] == 2 * channels:
        return out[:, :channels]
    if out.shape[1] != channels:
        raise ValueError(f"denoiser returned {out.shape[1]} channels for a {channels}-channel x_t")
    return out


def working_dtype(*tensors: Tensor | None) -> torch.dtype:
    """The widest floating dtype among `tensors`, at least float32 (a float16 or integer y is
    restored in float32)."""
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _inputs(
    operator: LinearOperator, y: Tensor, x_T: Tensor | None, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """(y, x_T) in the working dtype on y's device, checked against the operator: y must be a
    measurement of it (A x_T has y's shape) and x_T of the image size y was taken of."""
    y = torch.as_tensor(y)
    y = y.to(working_dtype(y, x_T))
    shape = (y.shape[0], *operator.x_shape(y))
    if x_T is None:
        x_T = _randn(shape, y, generator)
    elif tuple(x_T.shape) != shape:
        raise ValueError(f"x_T must have shape {shape}, got {tuple(x_T.shape)}")
    x_T = x_T.to(y)
    expected = tuple(operator.A(x_T).shape)
    if tuple(y.shape) != expected:
        raise ValueError(
            f"y must have shape {expected} to be a measurement of {type(operator).__name__} "
            f"on {shape} images, got {tuple(y.shape)}"
        )
    return y, x_T


def _randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """A standard-normal draw, made in float32 on like's device, in like's dtype."""
    z = torch.randn(shape, generator=generator, device=like.device, dtype=torch.float32)
    return z.to(like.dtype)


def _draws(
    step_noise: Iterable[Tensor] | None, like: Tensor, generator: torch.Generator | None
) -> Iterator[Tensor]:
    """Yield one standard-normal draw of like's shape (B, C, H, W) per transition."""
    shape = tuple(like.shape)
    if step_noise is None:
        while True:
            yield _randn(shape, like, generator)
    for k, z in enumerate(step_noise):
        z = torch.as_tensor(z)
        if tuple(z.shape) != shape:
            raise ValueError(f"step_noise[{k}] must have shape {shape}, got {tuple(z.shape)}")
        yield z.to(like)
    raise ValueError("step_noise ran out: it needs one draw per transition")
