"""The DDNM / DDNM+ sampler: step arithmetic, DDNM+ scalings, time travel, randomness, bad input.

Parity with the authors' code lives in test_parity.py; consistency over every operator in
test_consistency.py.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ddnm.operators import (
    Colorization,
    CompressedSensing,
    Deblur,
    Identity,
    Inpainting,
    LinearOperator,
    SuperResolution,
    compose,
    gaussian_kernel,
)
from ddnm.sampling import SamplerOptions, StepInfo, posterior_mean, sample, spawn
from ddnm.sampling import steps as S
from ddnm.schedules import linear_schedule, timestep_pairs

SCHEDULE = linear_schedule()


class BoundedNet(torch.nn.Module):
    """A random network whose x0 estimate stays in [-1, 1]: x0 = tanh(conv(x_t)), eps derived."""

    def __init__(self, seed: int = 0, channels: int = 3) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.calls: list[float] = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Any floating x_t (the conv runs in float32); eps in x_t's dtype."""
        self.calls.append(float(t[0]))
        a = SCHEDULE.alpha_bar_table_for(x_t.dtype)[t.long() + 1].view(-1, 1, 1, 1)
        x0 = torch.tanh(self.conv(x_t.float())).to(x_t.dtype)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def _image(seed: int = 0, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=g) * 2 - 1


# ---- DDNM+ scalings (Eq. 19) -------------------------------------------------------------


@pytest.mark.parametrize("sigma_t", [0.0, 0.05, 0.3, 0.99])
@pytest.mark.parametrize("sigma_y", [0.0, 0.02, 0.2])
def test_ddnm_plus_scalings_follow_eq19(sigma_t, sigma_y):
    a_t = torch.tensor(math.sqrt(1 - sigma_t**2))
    s = torch.tensor([0.0, 0.05, 0.25, 1.0, 2.0])
    lam, gamma = S.ddnm_plus_scalings(a_t, torch.tensor(sigma_t), sigma_y, s)
    for s_i, lam_i, gamma_i in zip(s.tolist(), lam.tolist(), gamma.tolist(), strict=True):
        if s_i == 0:  # null space: no correction, the full noise level
            assert lam_i == 0 and gamma_i == pytest.approx(sigma_t**2)
            continue
        noise = float(a_t) * sigma_y / s_i  # std of a_t A⁺y along this direction
        expected = 1.0 if sigma_t >= noise else sigma_t / noise
        assert lam_i == pytest.approx(expected, rel=1e-6)
        # total noise variance rule: (a_t λ σ_y / s)² + γ = σ_t²
        assert (float(a_t) * lam_i * sigma_y / s_i) ** 2 + gamma_i == pytest.approx(
            sigma_t**2, abs=1e-7
        )
        assert gamma_i >= 0


def test_ddnm_plus_with_zero_noise_is_ddnm():
    """σ_y → 0: λ = 1 everywhere in the range space, γ = σ_t², the DDNM+ step equals DDNM."""
    x, op = _image(1), SuperResolution(4)
    y = op.A(x)
    x0 = _image(2)
    a_t, sigma_t = torch.tensor(0.8), torch.tensor(0.6)
    plus, gamma = S.rectify_x0_plus(op, x0, y, a_t, sigma_t, 0.0)
    torch.testing.assert_close(plus, S.rectify_x0(op, x0, y), rtol=0, atol=1e-6)
    noise = _image(3)
    torch.testing.assert_close(S.shape_noise(op, noise, sigma_t, gamma), noise, atol=1e-6, rtol=0)


def test_ddnm_plus_shrinks_only_the_range_space_noise():
    """Inpainting, large σ_y: noise at known pixels is reduced, at missing pixels untouched."""
    mask = torch.zeros(16, 16)
    mask[:, :8] = 1
    op = Inpainting(mask)
    a_t, sigma_t = torch.tensor(0.99), torch.tensor(math.sqrt(1 - 0.99**2))
    x0 = _image(4)
    y = op.A(_image(5))
    x0_hat, gamma = S.rectify_x0_plus(op, x0, y, a_t, sigma_t, 1.0)
    lam = float(sigma_t / (a_t * 1.0))  # λ < 1: a partial correction towards y
    known = mask.bool()
    torch.testing.assert_close(
        x0_hat[..., known], x0[..., known] - lam * (x0 - y)[..., known], rtol=0, atol=1e-6
    )
    torch.testing.assert_close(x0_hat[..., ~known], x0[..., ~known])
    noise = torch.ones(1, 3, 16, 16)
    shaped = S.shape_noise(op, noise, sigma_t, gamma)
    assert torch.allclose(shaped[..., ~known], noise[..., ~known], atol=1e-6)
    assert shaped[..., known].abs().max() < 1e-3  # γ ≈ 0: the y noise already fills σ_t


# ---- the loop --------------------------------------------------------------------------


def test_draw_order_and_replay():
    """x_T then one draw per transition, from the generator; a replay from the tape is identical."""
    op, x = SuperResolution(2), _image(6)
    y, opts = op.A(x), SamplerOptions(steps=5, eta=0.85)
    out = sample(BoundedNet(), SCHEDULE, op, y, opts, generator=torch.Generator().manual_seed(3))
    tape = torch.Generator().manual_seed(3)
    draws = [torch.randn(1, 3, 16, 16, generator=tape) for _ in range(1 + 5)]
    replay = sample(BoundedNet(), SCHEDULE, op, y, opts, x_T=draws[0], step_noise=draws[1:])
    torch.testing.assert_close(out, replay, rtol=0, atol=0)


def test_eta_controls_the_fresh_noise():
    op, y = SuperResolution(2), SuperResolution(2).A(_image(7))
    x_T = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def run(eta, seed):
        opts = SamplerOptions(steps=5, eta=eta)
        noise = [
            torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed + k))
            for k in range(5)
        ]
        return sample(BoundedNet(), SCHEDULE, op, y, opts, x_T=x_T, step_noise=noise)

    torch.testing.assert_close(run(0.0, 0), run(0.0, 100), rtol=0, atol=0)
    assert (run(0.85, 0) - run(0.85, 100)).abs().max() > 1e-3


def test_time_travel_calls_and_renoises_the_corrected_estimate():
    op, y = Inpainting(torch.ones(16, 16)), _image(8)  # every pixel known: x̂0 = y exactly
    opts = SamplerOptions(steps=10, eta=0.0, travel_length=3, travel_repeat=2)
    pairs = timestep_pairs(10, 3, 2)
    net, infos = BoundedNet(), []
    noise = [
        torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(k))
        for k in range(len(pairs))
    ]
    sample(
        net,
        SCHEDULE,
        op,
        y,
        opts,
        step_noise=noise,
        generator=torch.Generator(),
        callback=infos.append,
    )
    assert net.calls == [float(t) for t, t_next in pairs if t_next < t]
    assert [(i.t, i.t_next) for i in infos] == pairs
    for k, info in enumerate(infos):
        if info.t_next > info.t:  # x_{t+l} = sqrt(ᾱ) x̂0 + sqrt(1 - ᾱ) z, x̂0 the corrected estimate
            a = SCHEDULE.alpha_bar_table[info.t_next + 1]
            torch.testing.assert_close(info.x_t, a.sqrt() * y + (1 - a).sqrt() * noise[k])


def test_callback_sees_every_step_and_can_stop_the_run():
    class Stop(Exception):
        pass

    seen: list[StepInfo] = []

    def callback(info: StepInfo) -> None:
        seen.append(info)
        if info.step == 3:
            raise Stop

    op = Colorization()
    with pytest.raises(Stop):
        sample(
            BoundedNet(),
            SCHEDULE,
            op,
            op.A(_image(9)),
            SamplerOptions(steps=8),
            generator=torch.Generator(),
            callback=callback,
        )
    assert [(i.step, i.total) for i in seen] == [(1, 8), (2, 8), (3, 8)]


def test_eps_of_another_shape_is_refused():
    """The run takes ε of x_t's shape only: the learned-variance split is the model adapters'
    (tests/test_models_adapters.py), a 2C-channel output reaching the sampler is an error."""
    net = BoundedNet()

    def six(x_t, t):
        return torch.cat([net(x_t, t), torch.zeros_like(x_t)], dim=1)

    op = Identity()
    with pytest.raises(ValueError, match=r"ε of shape \(1, 3, 16, 16\), got \(1, 6, 16, 16\)"):
        sample(six, SCHEDULE, op, _image(10), SamplerOptions(steps=4), generator=torch.Generator())


# ---- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"steps": 0}, "steps"),
        ({"eta": 1.5}, "eta"),
        ({"sigma_y": -0.1}, "sigma_y"),
        ({"sigma_y": float("nan")}, "sigma_y"),
        ({"steps": 5, "travel_length": 5, "travel_repeat": 2}, "travel_length"),
        ({"steps": True}, "steps"),
        ({"steps": 10.0}, "steps"),
        ({"eta": "0.5"}, "eta"),
        ({"eta": float("nan")}, "eta"),
        ({"sigma_y": float("inf")}, "sigma_y"),
        ({"travel_length": 2.0, "travel_repeat": 2}, "travel_length"),
        ({"clip_x0": 1}, "clip_x0"),
    ],
)
def test_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SamplerOptions(**kwargs)


def test_options_accept_numpy_numbers_and_store_python_ones():
    opts = SamplerOptions(steps=np.int64(20), eta=np.float32(0.5), travel_repeat=np.int32(2))
    assert opts == SamplerOptions(steps=20, eta=0.5, travel_repeat=2)
    assert type(opts.steps) is int and type(opts.eta) is float and type(opts.sigma_y) is float


def test_bad_call_arguments():
    op, y, opts = SuperResolution(2), torch.zeros(1, 3, 8, 8), SamplerOptions(steps=3)
    with pytest.raises(ValueError, match="x_T"):
        sample(BoundedNet(), SCHEDULE, op, y, opts, x_T=torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="step_noise"):
        sample(BoundedNet(), SCHEDULE, op, y, opts, step_noise=[torch.zeros(1, 3, 16, 16)])
    with pytest.raises(ValueError, match="step_noise"):
        sample(BoundedNet(), SCHEDULE, op, y, opts, step_noise=[torch.zeros(1, 3, 4, 4)] * 3)
    with pytest.raises(ValueError, match="steps"):
        sample(BoundedNet(), linear_schedule(10), op, y, SamplerOptions(steps=20))


def test_y_that_does_not_fit_the_operator_is_refused():
    mask = torch.ones(16, 16)
    old_photo = compose(Inpainting(mask), Colorization(), SuperResolution(2))
    cases = [
        (Inpainting(mask), torch.zeros(1, 3, 8, 8), "to match the mask"),  # mask of another size
        (CompressedSensing(0.5, image_size=16), torch.zeros(1, 3, 100), "m = 128"),
        (SuperResolution(2), torch.zeros(3, 8, 8), r"y must have shape \(B, C, H, W\)"),
        (old_photo, torch.zeros(1, 3, 8, 8), "one channel"),
        (Colorization(), torch.zeros(1, 3, 8, 8), r"\(B, 1, H, W\)"),
    ]
    for op, y, message in cases:
        with pytest.raises(ValueError, match=message):
            sample(BoundedNet(), SCHEDULE, op, y, SamplerOptions(steps=2))


def test_a_chain_without_exact_pinv_is_refused():
    op = compose(Inpainting(torch.rand(16, 16) > 0.5), Deblur(gaussian_kernel(1.0)))
    assert not op.exact_pinv
    with pytest.raises(ValueError, match=r"exact pseudo-inverse.*Inpainting → Deblur"):
        sample(BoundedNet(), SCHEDULE, op, op.A(_image(17)), SamplerOptions(steps=2))


class WithoutSVD(LinearOperator):
    """An operator the sampler sees only through A, A⁺ and x_shape (the DDNM+ scalar form)."""

    def __init__(self, inner: LinearOperator) -> None:
        self.inner = inner

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.A(x)

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner.A_pinv(y)

    def x_shape(self, y: torch.Tensor) -> tuple[int, int, int]:
        return self.inner.x_shape(y)


class WrongSize(WithoutSVD):
    """A faulty user operator: claims that y was taken of an image of y's own size."""

    def x_shape(self, y: torch.Tensor) -> tuple[int, int, int]:
        return tuple(y.shape[1:])  # type: ignore[return-value]


def test_y_is_checked_against_a_of_x_for_any_operator():
    """Caught before any step instead of broadcasting A x0 - y."""
    op, y = WrongSize(SuperResolution(2)), torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"y must have shape \(1, 3, 4, 4\)"):
        sample(BoundedNet(), SCHEDULE, op, y, SamplerOptions(steps=2))


def test_draws_are_consumed_lazily_from_any_iterable():
    op, y = Identity(), _image(11)
    opts = SamplerOptions(steps=4)
    x_T = torch.zeros(1, 3, 16, 16)
    endless = (torch.full((1, 3, 16, 16), float(k)) for k in itertools.count())
    out = sample(BoundedNet(), SCHEDULE, op, y, opts, x_T=x_T, step_noise=endless)
    listed = [torch.full((1, 3, 16, 16), float(k)) for k in range(4)]
    expected = sample(BoundedNet(), SCHEDULE, op, y, opts, x_T=x_T, step_noise=listed)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# ---- precision, batches, replay inputs ----------------------------------------------------


def _run(op, y, opts, **kwargs):
    return sample(BoundedNet(), SCHEDULE, op, y, opts, **kwargs)


def test_precision_follows_y_and_x_T():
    """The widest floating dtype of y and x_T, at least float32; generator draws are made in
    float32, so a float64 run with the same seed follows the float32 run."""
    op = SuperResolution(2)
    y, opts = op.A(_image(12)), SamplerOptions(steps=4, eta=0.85)

    def seeded(y_, **kwargs):
        return _run(op, y_, opts, generator=torch.Generator().manual_seed(0), **kwargs)

    out32, out64 = seeded(y), seeded(y.double())
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64
    torch.testing.assert_close(out64, out32.double(), rtol=0, atol=1e-5)
    assert float((op.A(out64) - y.double()).abs().max()) < 1e-12  # consistent in float64
    assert seeded(y.half()).dtype == torch.float32
    x_T = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert seeded(y, x_T=x_T.double()).dtype == torch.float64


def test_step_noise_as_one_tensor_or_array():
    op = Colorization()
    y, opts = op.A(_image(13)), SamplerOptions(steps=5, eta=0.85)
    g = torch.Generator().manual_seed(1)
    x_T, draws = torch.randn(1, 3, 16, 16, generator=g), torch.randn(5, 1, 3, 16, 16, generator=g)
    listed = _run(op, y, opts, x_T=x_T, step_noise=list(draws))
    for same in (draws, draws.numpy(), draws.double()):
        torch.testing.assert_close(_run(op, y, opts, x_T=x_T, step_noise=same), listed)


@pytest.mark.parametrize("sigma_y", [0.0, 0.05])
def test_a_batch_is_its_samples_run_one_by_one(sigma_y):
    """Batch 2 with one mask per sample (bool) equals two batch-1 runs (uint8 masks), with
    time travel and DDNM+."""
    g = torch.Generator().manual_seed(2)
    masks = torch.rand(2, 1, 16, 16, generator=g) > 0.4
    op = Inpainting(masks)
    y = op.A(torch.cat([_image(14), _image(15)]))
    opts = SamplerOptions(steps=6, eta=0.85, sigma_y=sigma_y, travel_length=2, travel_repeat=2)
    n = len(timestep_pairs(6, 2, 2))
    x_T, draws = torch.randn(2, 3, 16, 16, generator=g), torch.randn(n, 2, 3, 16, 16, generator=g)
    batch = _run(op, y, opts, x_T=x_T, step_noise=draws)
    for b in range(2):
        single = Inpainting(masks[b : b + 1].to(torch.uint8))
        one = _run(single, y[b : b + 1], opts, x_T=x_T[b : b + 1], step_noise=draws[:, b : b + 1])
        torch.testing.assert_close(batch[b : b + 1], one, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [lambda: Inpainting(torch.rand(16, 16) > 0.5), lambda: CompressedSensing(0.3, image_size=16)],
    ids=["inpainting", "compressed_sensing"],
)
def test_ddnm_plus_scalar_form_equals_the_svd_form_when_s_is_0_or_1(make):
    """Without an SVD the sampler uses the scalar form (s = 1 on the range space); for operators
    whose singular values are all 0 or 1 the two forms are the same computation."""
    op = make()
    y = op.A(_image(16))
    opts = SamplerOptions(steps=5, eta=0.85, sigma_y=0.1)
    g = torch.Generator().manual_seed(3)
    x_T, draws = torch.randn(1, 3, 16, 16, generator=g), torch.randn(5, 1, 3, 16, 16, generator=g)
    svd = _run(op, y, opts, x_T=x_T, step_noise=draws)
    scalar = _run(WithoutSVD(op), y, opts, x_T=x_T, step_noise=draws)
    torch.testing.assert_close(scalar, svd, rtol=0, atol=1e-5)
    noise_free = _run(op, y, SamplerOptions(steps=5, eta=0.85), x_T=x_T, step_noise=draws)
    assert float((svd - noise_free).abs().max()) > 1e-2  # σ_y does change the run


# ---- clipping x0|t and the posterior mean -------------------------------------------------


class WildNet(BoundedNet):
    """A network whose x0 estimate leaves the data range: x0 = 3 tanh(conv(x_t)) + 0.5."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = SCHEDULE.alpha_bar_table_for(x_t.dtype)[t.long() + 1].view(-1, 1, 1, 1)
        x0 = 3 * torch.tanh(self.conv(x_t)) + 0.5
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def _estimates(net, op, y, opts, seed=0):
    seen: list[torch.Tensor] = []
    out = sample(
        net,
        SCHEDULE,
        op,
        y,
        opts,
        generator=torch.Generator().manual_seed(seed),
        callback=lambda info: seen.append(info.x0),
    )
    return out, seen


def test_clip_x0_keeps_the_estimate_in_the_data_range():
    """With clip_x0 every x̂_{0|t} of inpainting (known pixels: y in [-1, 1]; unknown ones: the
    clipped x_{0|t}) lies in [-1, 1], and the result is still consistent; without it the wild
    network's estimates leave the range."""
    op = Inpainting(torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) > 0.5)
    y = op.A(_image(20))
    _, wild = _estimates(WildNet(), op, y, SamplerOptions(steps=6))
    out, clipped = _estimates(WildNet(), op, y, SamplerOptions(steps=6, clip_x0=True))
    assert max(float(x0.abs().max()) for x0 in wild) > 1.5
    assert max(float(x0.abs().max()) for x0 in clipped) <= 1.0
    assert float((op.A(out) - y).abs().max()) < 1e-6


def test_clip_x0_steps_with_the_eps_of_the_clipped_estimate():
    """Where x_{0|t} is in range clipping changes nothing (up to rounding); the ε it implies puts
    x_t back together: x_t = sqrt(ᾱ) x0 + sqrt(1 - ᾱ) ε."""
    op = SuperResolution(2)
    y, opts = op.A(_image(21)), SamplerOptions(steps=5, eta=0.5)
    plain, _ = _estimates(BoundedNet(), op, y, opts)
    clipped, _ = _estimates(BoundedNet(), op, y, SamplerOptions(steps=5, eta=0.5, clip_x0=True))
    torch.testing.assert_close(clipped, plain, rtol=0, atol=1e-5)
    x_t, a = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor(0.3)
    x0, eps = S.clip_x0(x_t, 4 * x_t, a)
    assert float(x0.abs().max()) == 1.0
    torch.testing.assert_close(a.sqrt() * x0 + (1 - a).sqrt() * eps, x_t)


def test_posterior_mean_is_the_mean_of_independent_draws():
    """samples = 1 is `sample` with the same generator; samples = K the mean of K runs, run k
    drawing from child k of `spawn(generator, K)` (a per-image mask batch included), each draw
    different, the mean consistent with y; the callback follows the common steps once."""
    op = Inpainting(torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.5)
    y, opts = op.A(torch.cat([_image(22), _image(23)])), SamplerOptions(steps=5)
    seeded = torch.Generator().manual_seed
    one = posterior_mean(BoundedNet(), SCHEDULE, op, y, opts, 1, generator=seeded(4))
    torch.testing.assert_close(one, _run(op, y, opts, generator=seeded(4)), rtol=0, atol=0)
    draws = [_run(op, y, opts, generator=child) for child in spawn(seeded(4), 3)]
    steps: list[tuple[int, int]] = []
    mean = posterior_mean(
        BoundedNet(),
        SCHEDULE,
        op,
        y,
        opts,
        3,
        generator=seeded(4),
        callback=lambda info: steps.append((info.step, info.total)),
    )
    torch.testing.assert_close(mean, sum(draws) / 3, rtol=0, atol=1e-6)
    assert float((draws[0] - draws[2]).abs().max()) > 1e-2  # the draws differ
    assert float((op.A(mean) - y).abs().max()) < 1e-6
    assert steps == [(k, 5) for k in range(1, 6)]


@pytest.mark.parametrize("samples", [0, -1, 2.0, True])
def test_posterior_mean_needs_a_positive_integer(samples):
    op = SuperResolution(2)
    with pytest.raises(ValueError, match="samples"):
        posterior_mean(
            BoundedNet(), SCHEDULE, op, op.A(_image(1)), SamplerOptions(steps=2), samples
        )
