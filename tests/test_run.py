"""The steppable run and its drivers: `sample` as before (bit for bit on the recording CPU),
`lockstep` of K runs as K separate runs, per-run generators, the pin hook, and what a driver
sees of a run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddnm import operators as O
from ddnm.models import as_denoiser
from ddnm.sampling import (
    NetCall,
    Pin,
    SamplerOptions,
    StepInfo,
    finish,
    lockstep,
    run,
    sample,
    spawn,
)
from ddnm.sampling.calls import join
from ddnm.schedules import linear_schedule, timestep_pairs
from tests.conftest import REPO, fixture_network
from tests.data import record_closed_loop as recorded

SCHEDULE = linear_schedule()


def test_sample_reproduces_the_closed_loop() -> None:
    """Outputs recorded from the loop that called the network itself (tests/data), reproduced
    by the run driven with `finish`: same arithmetic, same draw order. Bit for bit on the CPU
    that recorded them; another CPU's convolution kernels (oneDNN picks them by instruction set)
    change the last float32 bits, which the steps grow to at most 1e-5 of an output's range
    (measured on an AVX-512 FP16 CPU), so the bound is 1e-4 of it: a changed draw order or
    formula moves outputs by their range."""
    stored = dict(np.load(REPO / "tests" / "data" / "closed_loop.npz"))
    outputs = recorded.record()
    assert sorted(outputs) == sorted(stored)
    for name, value in outputs.items():
        scale = float(np.abs(stored[name]).max())
        np.testing.assert_allclose(value, stored[name], rtol=0, atol=1e-4 * scale, err_msg=name)


def test_a_run_asks_once_per_denoising_transition_and_returns_x0() -> None:
    """Driving by hand: one request per denoising transition (time travel stays inside), t per
    sample, labels and scales sent with each request; the result is sample()'s."""
    op = O.SuperResolution(2)
    y = op.A(recorded.photos(2))
    options = SamplerOptions(steps=6, travel_length=2, travel_repeat=2)
    eps_model = as_denoiser(fixture_network("ddpm_small"))
    the_run = run(
        SCHEDULE, op, y, options, generator=torch.Generator().manual_seed(1), labels=4, scales=0.5
    )
    calls: list[NetCall] = []
    try:
        call = next(the_run)
        while True:
            calls.append(call)
            call = the_run.send(eps_model(call.x_t, call.t))
    except StopIteration as done:
        x0 = done.value
    pairs = timestep_pairs(6, 2, 2)
    assert [int(c.t[0]) for c in calls] == [t for t, t_next in pairs if t_next < t]
    assert all(c.t.shape == (2,) and torch.equal(c.labels, torch.tensor([4, 4])) for c in calls)
    assert all(torch.equal(c.scales, torch.tensor([0.5, 0.5])) for c in calls)
    expected = sample(
        eps_model, SCHEDULE, op, y, options, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(x0, expected)


def _guided_eps64():
    return as_denoiser(
        fixture_network("guided_small").double(),
        classifier=recorded.small_classifier().double(),
        schedule=SCHEDULE,
    )


def _ddpm_eps64():
    return as_denoiser(fixture_network("ddpm_small").double())


CASES = {
    "ddnm": (SamplerOptions(steps=8), False),
    "ddnm_plus": (SamplerOptions(steps=8, sigma_y=0.05), False),
    "time_travel": (SamplerOptions(steps=8, eta=1.0, travel_length=2, travel_repeat=2), False),
    "guided_per_sample": (SamplerOptions(steps=6, clip_x0=True), True),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_lockstep_of_k_runs_equals_k_separate_runs(case: str) -> None:
    """Three runs, each with its own operator (mask), y, child generator and, guided, its own
    label and scale, in one batch of three per forward: each result equals its run driven alone
    up to the rounding of a batched forward. In float64, so that rounding (1e-16 a forward,
    grown along the chain) cannot hide a real difference; a batch-wide reduction anywhere would
    show as O(1) here."""
    options, guided = CASES[case]
    eps_model = _guided_eps64() if guided else _ddpm_eps64()
    x = torch.cat([recorded.photos(2), recorded.photos(1).flip(-1)]).double()
    ops = [O.Inpainting(recorded.mask(k)) for k in range(3)]
    conditioning = [(3, 0.0), (7, 2.0), (281, 5.0)] if guided else [(None, None)] * 3

    def runs():
        children = spawn(torch.Generator().manual_seed(9), 3)
        return [
            run(SCHEDULE, op, op.A(x[k : k + 1]), options, generator=g, labels=lab, scales=s)
            for k, (op, g, (lab, s)) in enumerate(zip(ops, children, conditioning, strict=True))
        ]

    batched = finish(lockstep(runs()), eps_model)
    alone = [finish(r, eps_model) for r in runs()]
    for together, single in zip(batched, alone, strict=True):
        torch.testing.assert_close(together, single, rtol=0, atol=1e-9)
    assert float((alone[0] - alone[1]).abs().max()) > 1e-2  # the runs differ
    if guided:  # the scales matter: run 1 unguided is another image
        label, _ = conditioning[1]
        unguided = run(
            SCHEDULE,
            ops[1],
            ops[1].A(x[1:2]),
            options,
            generator=spawn(torch.Generator().manual_seed(9), 3)[1],
            labels=label,
            scales=0.0,
        )
        assert float((finish(unguided, eps_model) - alone[1]).abs().max()) > 1e-6


def test_lockstep_batches_the_requests_and_lets_a_finished_run_leave() -> None:
    """Runs of 3 and 5 steps: the network sees batch 2 three times, then batch 1 twice."""
    eps_model = _ddpm_eps64()
    op, y = O.Colorization(), O.Colorization().A(recorded.photos().double())
    batches: list[int] = []

    def counting(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batches.append(x_t.shape[0])
        return eps_model(x_t, t)

    def runs():
        return [
            run(
                SCHEDULE, op, y, SamplerOptions(steps=n), generator=torch.Generator().manual_seed(n)
            )
            for n in (3, 5)
        ]

    short, long = finish(lockstep(runs()), counting)
    assert batches == [2, 2, 2, 1, 1]
    alone = [finish(r, eps_model) for r in runs()]
    torch.testing.assert_close(short, alone[0], rtol=0, atol=1e-9)
    torch.testing.assert_close(long, alone[1], rtol=0, atol=1e-9)


def test_spawn_is_deterministic_and_child_i_ignores_k() -> None:
    def stream(g: torch.Generator) -> torch.Tensor:
        return torch.randn(8, generator=g)

    two = [stream(g) for g in spawn(torch.Generator().manual_seed(5), 2)]
    five = [stream(g) for g in spawn(torch.Generator().manual_seed(5), 5)]
    assert all(torch.equal(a, b) for a, b in zip(two, five[:2], strict=False))
    assert not torch.equal(five[0], five[1])
    other = [stream(g) for g in spawn(torch.Generator().manual_seed(6), 2)]
    assert not torch.equal(two[0], other[0])


def test_negative_guidance_scales_are_refused_before_the_run_starts() -> None:
    op = O.Colorization()
    with pytest.raises(ValueError, match="guidance scales must be >= 0"):
        run(
            SCHEDULE,
            op,
            op.A(recorded.photos(2)),
            SamplerOptions(steps=2),
            scales=torch.tensor([1.0, -1.0]),
        )


def test_joined_requests_fill_in_labels_and_scales_of_those_without() -> None:
    x, t = torch.zeros(1, 3, 4, 4), torch.zeros(1)
    labelled = NetCall(x, t, labels=torch.tensor([1]), scales=torch.tensor([2.0]))
    joined = join([labelled, labelled])
    assert joined.batch == 2 and torch.equal(joined.labels, torch.tensor([1, 1]))
    mixed = join([labelled, NetCall(x, t)])
    assert torch.equal(mixed.labels, torch.tensor([1, 0]))
    assert torch.equal(mixed.scales, torch.tensor([2.0, 0.0]))
    assert join([NetCall(x, t)] * 2).labels is None
    with pytest.raises(ValueError, match=r"shape \(1,\)"):
        NetCall(x, torch.zeros(2))


def test_pin_holds_the_estimate_where_its_mask_is_one() -> None:
    """Every corrected estimate x̂_{0|t}, and so the result (the last step adds no noise), equals
    the pinned values under the mask; elsewhere the run is free."""
    eps_model = as_denoiser(fixture_network("ddpm_small"))
    op = O.SuperResolution(4)
    x = recorded.photos()
    y = op.A(x)
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    mask[..., :, :8] = True  # a left strip, as a window's overlap with its left neighbour
    values = x.flip(-2)  # consistent with nothing in particular: the pin alone holds it
    seen: list[StepInfo] = []
    pinned = finish(
        run(
            SCHEDULE,
            op,
            y,
            SamplerOptions(steps=6),
            generator=torch.Generator().manual_seed(0),
            pin=Pin(mask, values),
            callback=seen.append,
        ),
        eps_model,
    )
    strip = mask.expand_as(x)
    assert all(torch.equal(info.x0[strip], values[strip]) for info in seen)
    torch.testing.assert_close(pinned[strip], values[strip], rtol=0, atol=1e-6)
    free = sample(eps_model, SCHEDULE, op, y, SamplerOptions(steps=6), generator=torch.Generator())
    assert float((free[strip] - values[strip]).abs().max()) > 0.1
