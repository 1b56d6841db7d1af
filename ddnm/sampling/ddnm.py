"""The DDNM / DDNM+ sampler run (paper Alg. 1-3), and `sample` / `posterior_mean` that drive it.

Paper → code:
    Alg. 1 line 4, x_{0|t} from ε_θ(x_t, t)          steps.predict_x0
    (option clip_x0) x_{0|t} clipped to [-1, 1]      steps.clip_x0
    Alg. 1 line 5, x̂_{0|t} = x_{0|t} - A⁺(A x_{0|t} - y)  steps.rectify_x0          (sigma_y = 0)
    Eq. 17, x̂_{0|t} = x_{0|t} - Σ_t A⁺(A x_{0|t} - y)   steps.rectify_x0_plus     (sigma_y > 0)
    Eq. 18-19, Φ_t = γ_t, λ_t (per singular value)       steps.ddnm_plus_scalings, steps.shape_noise
    Alg. 1 line 6, x_{t-1} from x̂_{0|t} (DDIM with η)    steps.step_noise_terms
    one denoising transition, all of the above           step
    Sec. 3.4 / Alg. 3, time travel                       steps.renoise on a climbing transition

`run` is the loop, written once: a generator that yields one `NetCall` per denoising transition
and is sent ε (time-travel transitions need no network and stay inside); the driver that sends ε
owns the network (`ddnm.sampling.batching`: `finish` for one run, `lockstep` for several in one
batch).

Randomness: x_T and exactly one standard-normal draw of x's shape per transition (time-travel
transitions and the final 0 → -1 step included, used or not), in that order, from `step_noise`
when given, else from `generator`. A run is thus replayable from (x_T, step_noise). Several runs
of one job (the K draws of `posterior_mean`) take one child generator each (`batching.spawn`),
so a result never depends on how runs are batched.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ddnm.operators.base import LinearOperator
from ddnm.sampling import steps as S
from ddnm.sampling.batching import finish, lockstep, spawn
from ddnm.sampling.calls import EpsModel, NetCall, Run
from ddnm.sampling.options import SamplerOptions
from ddnm.schedules import Schedule, timestep_pairs


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


@dataclass(frozen=True)
class Pin:
    """x̂_{0|t} held at `values` where `mask` is 1, after every correction (Mask-Shift: the
    overlap of a window with its finished neighbours).

    mask: (B or 1, C or 1, H, W), bool or {0, 1}; values: (B, C, H, W) in [-1, 1].
    """

    mask: Tensor
    values: Tensor

    def __call__(self, x0_hat: Tensor) -> Tensor:
        return torch.where(self.mask.to(x0_hat.device).bool(), self.values.to(x0_hat), x0_hat)


Callback = Callable[[StepInfo], None]


def step(
    operator: LinearOperator,
    y: Tensor,
    options: SamplerOptions,
    x_t: Tensor,
    eps: Tensor,
    z: Tensor,
    alpha_bar: Tensor,
    alpha_bar_next: Tensor,
    pin: Pin | None = None,
) -> tuple[Tensor, Tensor]:
    """One denoising transition t -> t' < t from the network's ε: (x_{t'}, x̂_{0|t}).

    x_t, eps, z (B, C, H, W): the state, ε_θ(x_t, t) and the transition's standard-normal draw;
    alpha_bar, alpha_bar_next: 0-dim ᾱ_t and ᾱ_{t'} in x_t's dtype.
    """
    x0 = S.predict_x0(x_t, eps, alpha_bar)
    if options.clip_x0:
        x0, eps = S.clip_x0(x_t, x0, alpha_bar)
    a_t, noise = S.step_noise_terms(eps, z, alpha_bar_next, options.eta)
    if options.sigma_y == 0:
        x0_hat = S.rectify_x0(operator, x0, y)
    else:
        sigma_t = (1 - alpha_bar_next).sqrt()
        x0_hat, gamma = S.rectify_x0_plus(operator, x0, y, a_t, sigma_t, options.sigma_y_model)
        noise = S.shape_noise(operator, noise, sigma_t, gamma)
    if pin is not None:
        x0_hat = pin(x0_hat)
    return a_t * x0_hat + noise, x0_hat


def run(
    schedule: Schedule,
    operator: LinearOperator,
    y: Tensor,
    options: SamplerOptions,
    *,
    x_T: Tensor | None = None,
    step_noise: Iterable[Tensor] | None = None,
    generator: torch.Generator | None = None,
    labels: int | Tensor | None = None,
    scales: float | Tensor | None = None,
    pin: Pin | None = None,
    callback: Callback | None = None,
) -> Run:
    """One DDNM (sigma_y = 0) or DDNM+ (sigma_y > 0) run restoring x from y = A x (+ n), as a
    generator of network requests (see the module docstring); checked here, before it starts.

    y: the measurement in the operator's layout (e.g. (B, C, H/f, W/f) for super-resolution) on
    the [-1, 1] value scale, batch B (ValueError if it does not fit the operator).
    x_T: (B, C, H, W) standard-normal initial state; drawn from `generator` when None.
    step_noise: per-transition standard-normal draws of shape (B, C, H, W), consumed in order
    (any iterable of tensors or arrays, e.g. a list or a (transitions, B, C, H, W) tensor).
    labels, scales: class labels and classifier-guidance scales, one for all B samples or (B,);
    sent with every request (scales checked >= 0 here, once). pin: x̂_{0|t} held fixed where
    its mask is 1.
    Precision: the run computes in the widest floating dtype of y and x_T, at least float32, on
    y's device; draws from `generator` are made in float32, so float32 and float64 runs with the
    same seed use the same noise. ᾱ comes from `Schedule.alpha_bar_table_for` in that dtype.
    Returns x0 (B, C, H, W), unclamped (about [-1, 1]); with sigma_y = 0, A x0 = y up to rounding.
    An exception raised by `callback` stops the run and propagates (e.g. to cancel a job).
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
    batch = x_T.shape[0]
    conditioning = {
        "labels": _per_sample(labels, batch, torch.long, y.device),
        "scales": _per_sample(scales, batch, y.dtype, y.device),
    }
    if conditioning["scales"] is not None and (conditioning["scales"] < 0).any():
        raise ValueError(f"guidance scales must be >= 0, got {scales!r}")
    alpha_bar = schedule.alpha_bar_table_for(y.dtype).to(y.device)
    draws = _draws(step_noise, x_T, generator)
    return _loop(operator, y, options, x_T, pairs, draws, alpha_bar, conditioning, pin, callback)


def _loop(
    operator: LinearOperator,
    y: Tensor,
    options: SamplerOptions,
    x_T: Tensor,
    pairs: list[tuple[int, int]],
    draws: Iterator[Tensor],
    alpha_bar: Tensor,
    conditioning: dict[str, Tensor | None],
    pin: Pin | None,
    callback: Callback | None,
) -> Run:
    """The transitions of `pairs` (see `run`); ᾱ_t is alpha_bar[t + 1] (ᾱ_{-1} = 1)."""
    x_t, x0_hat = x_T, x_T
    for k, (t, t_next) in enumerate(pairs, start=1):
        z = next(draws)
        if t_next > t:  # time travel: re-noise the latest corrected estimate back to t_next
            x_t = S.renoise(x0_hat, z, alpha_bar[t_next + 1])
        else:
            t_batch = torch.full((x_t.shape[0],), float(t), device=x_t.device, dtype=x_t.dtype)
            eps = _checked_eps((yield NetCall(x_t, t_batch, **conditioning)), x_t)
            x_t, x0_hat = step(
                operator, y, options, x_t, eps, z, alpha_bar[t + 1], alpha_bar[t_next + 1], pin
            )
        if callback is not None:
            callback(StepInfo(k, len(pairs), t, t_next, x_t, x0_hat))
    return x_t


@torch.no_grad()
def sample(
    denoiser: EpsModel,
    schedule: Schedule,
    operator: LinearOperator,
    y: Tensor,
    options: SamplerOptions,
    *,
    x_T: Tensor | None = None,
    step_noise: Iterable[Tensor] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Restore x from y = A x (+ n): one `run` driven to its end with `denoiser` (ε_θ(x_t, t),
    see `calls.EpsModel`). Arguments and result as in `run`. Runs without autograd; a denoiser
    that needs gradients (classifier guidance) enables them locally.
    """
    the_run = run(
        schedule,
        operator,
        y,
        options,
        x_T=x_T,
        step_noise=step_noise,
        generator=generator,
        callback=callback,
    )
    return finish(the_run, denoiser)


def posterior_mean_run(
    schedule: Schedule,
    operator: LinearOperator,
    y: Tensor,
    options: SamplerOptions,
    samples: int,
    *,
    generator: torch.Generator | None = None,
    labels: int | Tensor | None = None,
    scales: float | Tensor | None = None,
    callback: Callback | None = None,
) -> Run:
    """The mean of `samples` independent DDNM restorations of y, as one run whose requests hold
    all draws (batch samples * B): `mean_of_draws` of `run`.

    One run draws one x from the posterior p(x | y); its expected squared error is that of the
    posterior mean plus the posterior variance. The mean of K draws estimates E[x | y], the
    restoration of least expected squared error (highest expected PSNR), trading detail the data
    do not determine (e.g. the hue of a grey surface in colorization) for its average. A is
    linear, so A of the mean is y whenever each draw is consistent. Returns (B, C, H, W).
    """

    def draw(child: torch.Generator | None, relay: Callback | None) -> Run:
        return run(
            schedule,
            operator,
            y,
            options,
            generator=child,
            labels=labels,
            scales=scales,
            callback=relay,
        )

    return mean_of_draws(draw, samples, generator=generator, callback=callback)


def mean_of_draws(
    draw: Callable[[torch.Generator | None, Callback | None], Run],
    samples: int,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Run:
    """The mean of `samples` runs `draw(generator, callback)` (any run: one image, or its
    windows). samples = 1 is the draw with `generator` itself; K > 1 draws take child k of
    `spawn(generator, K)` each and step in `lockstep`, so the result does not depend on how the
    draws are batched. The callback follows draw 0 (all draws step together)."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    if samples == 1:
        return draw(generator, callback)
    runs = [
        draw(child, callback if k == 0 else None)
        for k, child in enumerate(spawn(generator, samples))
    ]
    return _mean(lockstep(runs))


def _mean(runs: Generator[NetCall, Tensor, list[Tensor]]) -> Run:
    """The mean of the results of `runs`, summed as they come (no stack of all of them)."""
    results = yield from runs
    total = results[0].clone()
    for x in results[1:]:
        total += x
    return total / len(results)


@torch.no_grad()
def posterior_mean(
    denoiser: EpsModel,
    schedule: Schedule,
    operator: LinearOperator,
    y: Tensor,
    options: SamplerOptions,
    samples: int,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """`posterior_mean_run` driven to its end with `denoiser`: the mean of `samples` draws."""
    the_run = posterior_mean_run(
        schedule, operator, y, options, samples, generator=generator, callback=callback
    )
    return finish(the_run, denoiser)


def _checked_eps(eps: Tensor, x_t: Tensor) -> Tensor:
    """ε sent for x_t, in x_t's dtype and device; its shape must be x_t's."""
    if eps is None or tuple(eps.shape) != tuple(x_t.shape):
        got = None if eps is None else tuple(eps.shape)
        raise ValueError(f"the network must return ε of shape {tuple(x_t.shape)}, got {got}")
    return eps.to(x_t)


def _per_sample(
    value: float | Tensor | None, batch: int, dtype: torch.dtype, device: torch.device
) -> Tensor | None:
    """One value for all `batch` samples or (batch,) values, as a (batch,) tensor; None stays."""
    if value is None:
        return None
    values = torch.as_tensor(value, dtype=dtype, device=device).reshape(-1)
    if len(values) not in (1, batch):
        raise ValueError(f"give one value or {batch} (one per sample), got {len(values)}")
    return values.expand(batch)


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
