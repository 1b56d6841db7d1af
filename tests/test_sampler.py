"""The DDNM / DDNM+ sampler: step arithmetic, DDNM+ scalings, time travel, randomness, bad input.

Parity with the authors' code lives in test_parity.py; consistency over every operator in
test_consistency.py.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ddnm.operators import Colorization, Identity, Inpainting, SuperResolution
from ddnm.sampling import SamplerOptions, StepInfo, sample
from ddnm.sampling import steps as S
from ddnm.schedules import linear_schedule, timestep_pairs

SCHEDULE = linear_schedule()


class BoundedNet(torch.nn.Module):
    """A random network whose x0 estimate stays in [-1, 1]: x0 = tanh(conv(x_t)), eps derived."""

    def __init__(self, seed: int = 0, channels: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.calls: list[float] = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(float(t[0]))
        a = SCHEDULE.alpha_bar_table[t.long() + 1].view(-1, 1, 1, 1)
        x0 = torch.tanh(self.conv(x_t))
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


def test_learned_sigma_output_keeps_the_first_channels():
    net = BoundedNet()

    def six(x_t, t):
        return torch.cat([net(x_t, t), torch.full_like(x_t, 1e6)], dim=1)

    op = Identity()
    y, opts = _image(10), SamplerOptions(steps=4)
    a = sample(six, SCHEDULE, op, y, opts, generator=torch.Generator().manual_seed(0))
    b = sample(net, SCHEDULE, op, y, opts, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"steps": 0}, "steps"),
        ({"eta": 1.5}, "eta"),
        ({"sigma_y": -0.1}, "sigma_y"),
        ({"sigma_y": float("nan")}, "sigma_y"),
        ({"steps": 5, "travel_length": 5, "travel_repeat": 2}, "travel_length"),
    ],
)
def test_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SamplerOptions(**kwargs)


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


def test_draws_are_consumed_lazily_from_any_iterable():
    op, y = Identity(), _image(11)
    opts = SamplerOptions(steps=4)
    noise = (torch.zeros(1, 3, 16, 16) for _ in itertools.count())  # an endless generator
    out = sample(
        BoundedNet(), SCHEDULE, op, y, opts, x_T=torch.zeros(1, 3, 16, 16), step_noise=noise
    )
    assert out.shape == (1, 3, 16, 16)
