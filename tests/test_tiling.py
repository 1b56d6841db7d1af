"""Tiling: window plans (contract.tiling), restriction of operators to a window, Mask-Shift (each
window's own result kept exactly, wavefront = one-by-one order) and the fused windows."""

from __future__ import annotations

import itertools

import pytest
import torch

from contract.spec import TaskSpec
from contract.tiling import axis_starts, plan_tiles
from ddnm import operators as O
from ddnm.models import as_denoiser
from ddnm.sampling import NetCall, SamplerOptions, finish, run
from ddnm.schedules import linear_schedule, timestep_pairs
from ddnm.tiling import (
    NotTileable,
    OneByOne,
    _blended_eps,
    blend,
    fused_run,
    mask_shift_run,
    restrict,
    window_y,
)
from tests.conftest import fixture_network
from tests.data.record_closed_loop import photos

SCHEDULE = linear_schedule()


def test_axis_starts_cover_any_length_flush_to_the_edge() -> None:
    assert axis_starts(32, 32, 16) == (0,)
    assert axis_starts(20, 32, 16) == (0,)  # shorter than a window: padded to one
    assert axis_starts(64, 32, 16) == (0, 16, 32)
    assert axis_starts(70, 32, 16) == (0, 16, 32, 38)  # ragged: the last one flush
    for length in range(32, 200, 7):
        starts = axis_starts(length, 32, 16)
        assert starts[-1] + 32 == length and all(b - a <= 16 for a, b in itertools.pairwise(starts))


def test_a_4x4_grid_runs_in_10_waves() -> None:
    """Overlap n/2: window (i, j) waits for its left, top-left, top and top-right neighbours,
    so it runs in wave 2i + j."""
    plan = plan_tiles(80, 80, 32, 16)
    assert plan.rows == plan.cols == (0, 16, 32, 48) and len(plan.boxes) == 16
    assert plan.deps[5] == (0, 1, 2, 4)  # (1, 1): (0, 0), (0, 1), (0, 2), (1, 0)
    level = {k: w for w, wave in enumerate(plan.waves) for k in wave}
    assert all(level[4 * i + j] == 2 * i + j for i in range(4) for j in range(4))
    assert plan.summary() == {"window": 32, "overlap": 16, "windows": 16, "waves": 10}


def test_plans_align_to_the_chain_and_refuse_what_cannot_work() -> None:
    assert plan_tiles(64, 64, 32, 10, align=4).overlap == 8  # whole blocks of y
    with pytest.raises(ValueError, match="no multiple of the chain's downsampling factor 3"):
        plan_tiles(96, 96, 32, 16, align=3)
    with pytest.raises(ValueError, match=r"overlap must be in \[0, 16\]"):
        plan_tiles(96, 96, 32, 20)
    assert plan_tiles(20, 50, 32, 16).canvas == (32, 50)


@pytest.mark.parametrize(("steps", "length", "repeat"), [(100, 1, 1), (100, 10, 3), (7, 3, 2)])
def test_the_predicted_calls_are_the_runs_network_calls(steps: int, length: int, repeat: int):
    spec = TaskSpec.model_validate(
        {
            "degradations": [{"op": "denoise"}],
            "steps": steps,
            "travel": {"length": length, "repeat": repeat},
        }
    )
    calls = sum(1 for t, t_next in timestep_pairs(steps, length, repeat) if t_next < t)
    assert spec.network_calls == calls


def _mask(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(h, w, generator=torch.Generator().manual_seed(seed)) > 0.4


@pytest.mark.parametrize(
    "make",
    [
        lambda: O.SuperResolution(4),
        lambda: O.Colorization(),
        lambda: O.Inpainting(_mask(64, 96)),
        lambda: O.compose(O.Inpainting(_mask(64, 96)), O.Colorization(), O.SuperResolution(4)),
        lambda: O.compose(O.SuperResolution(2), O.SuperResolution(2)),
    ],
    ids=["sr_box", "colorization", "inpainting", "old_photo", "sr_chain"],
)
def test_a_restricted_operator_observes_its_window_as_the_whole_does(make) -> None:
    op = make()
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 2 - 1
    factor = 64 // op.A(x).shape[-2]
    for box in [(0, 32, 0, 32), (16, 48, 40, 72), (32, 64, 64, 96)]:
        window = restrict(op, box)
        seen = window.A(x[..., box[0] : box[1], box[2] : box[3]])
        torch.testing.assert_close(seen, window_y(op.A(x), box, factor), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "op",
    [
        O.Deblur(O.gaussian_kernel(1.0)),
        O.SuperResolution(2, filter="bicubic"),
        O.CompressedSensing(0.5, image_size=32),
    ],
    ids=["blur", "bicubic", "cs"],
)
def test_operators_that_reach_across_windows_are_refused(op) -> None:
    with pytest.raises(NotTileable, match="fused"):
        restrict(op, (0, 32, 0, 32))


def _mask_shift(layout, op, y, eps_model) -> torch.Tensor:
    the_run = mask_shift_run(
        SCHEDULE,
        op,
        y,
        SamplerOptions(steps=3),
        layout,
        4,
        generator=torch.Generator().manual_seed(2),
    )
    return finish(the_run, eps_model)


@pytest.mark.slow
def test_mask_shift_keeps_each_windows_own_result_and_order_does_not_matter() -> None:
    """A 3 x 3 grid of windows (64 x 64, 4x SR): the canvas holds, on every window's box, that
    window's own result (restoring only the windows up to it gives the same pixels there, bit
    for bit), the wavefront order gives the same image as one by one (in float64, so that the
    rounding of a batched forward cannot hide a difference), and A x = y."""
    eps_model = as_denoiser(fixture_network("ddpm_small").double())
    x = torch.nn.functional.interpolate(photos().double(), size=(64, 64), mode="bilinear")
    op = O.SuperResolution(4)
    y = op.A(x)
    plan = plan_tiles(64, 64, 32, 16, align=4)
    assert len(plan.boxes) == 9 and len(plan.waves) == 7  # waves 2i + j
    one_by_one = _mask_shift(OneByOne(plan, 9), op, y, eps_model)
    for k, (top, bottom, left, right) in enumerate(plan.boxes):
        upto_k = _mask_shift(OneByOne(plan, k + 1), op, y, eps_model)
        assert torch.equal(
            upto_k[..., top:bottom, left:right], one_by_one[..., top:bottom, left:right]
        )
    wavefront = _mask_shift(plan, op, y, eps_model)
    torch.testing.assert_close(wavefront, one_by_one, rtol=0, atol=1e-9)
    assert float((op.A(wavefront) - y).abs().max()) < 1e-9


def test_fused_windows_blend_eps_into_a_weighted_mean() -> None:
    """Every window answering ε = x_t gives back x_t itself: the blend is a normalised weighted
    mean; the requests are the windows, `chunk` at a time, per sample."""
    plan = plan_tiles(40, 72, 32, 16)
    x_t = torch.randn(2, 3, 40, 72, generator=torch.Generator().manual_seed(0))
    call = NetCall(x_t, torch.full((2,), 500.0))
    answers = _blended_eps(call, plan.boxes, 5, blend(plan.boxes, x_t))
    batches, request = [], next(answers)
    try:
        while True:
            batches.append(request.batch)
            request = answers.send(request.x_t)
    except StopIteration as done:
        eps = done.value
    assert sum(batches) == 2 * len(plan.boxes) and max(batches) == 5
    torch.testing.assert_close(eps, x_t, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_fused_windows_keep_a_blur_exactly_consistent() -> None:
    """The correction runs once on the whole canvas with the global operator: A x = y for a
    blur, which no window can restrict."""
    eps_model = as_denoiser(fixture_network("ddpm_small").double())
    x = torch.nn.functional.interpolate(photos(), size=(40, 72), mode="bilinear").double()
    op = O.Deblur(O.gaussian_kernel(1.0))
    y = op.A(x)
    plan = plan_tiles(40, 72, 32, 16)
    inner = run(SCHEDULE, op, y, SamplerOptions(steps=3), generator=torch.Generator())
    restored = finish(fused_run(inner, plan.boxes, chunk=4), eps_model)
    assert restored.shape == x.shape
    assert float((op.A(restored) - y).norm() / y.norm()) < 1e-10
