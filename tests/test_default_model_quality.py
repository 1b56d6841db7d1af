"""The shipped default model on held-out photographs: colorization, the task that leaves the
whole colour to the model, beats the grey image A⁺y in PSNR with time travel (one draw) and with
the mean of several draws, while keeping A x = y. The full figures are in bench/quality.md."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from ddnm.commands.restore import load_model
from ddnm.imaging import to_tensor, to_uint8
from ddnm.metrics import psnr
from ddnm.models.adapters import as_denoiser
from ddnm.operators import Colorization
from ddnm.sampling import Denoiser, SamplerOptions, posterior_mean
from ddnm.schedules import linear_schedule
from ddnm.tasks import as_image, consistency

pytestmark = pytest.mark.slow


def held_out_crops() -> torch.Tensor:
    """(9, 3, 32, 32) in [-1, 1]: three 32 x 32 crops along the diagonal of each held-out image
    (never in the training set), box-downscaled 4x as in bench/quality.py."""
    crops = []
    for name in ("astronaut", "coffee", "chelsea"):
        small = np.asarray(Image.fromarray(getattr(skimage.data, name)()).reduce(4))
        h, w = small.shape[:2]
        for k in (1, 2, 3):
            top, left = k * h // 4 - 16, k * w // 4 - 16
            crops.append(to_tensor(small[top : top + 32, left : left + 32]))
    return torch.cat(crops)


@pytest.fixture(scope="module")
def denoiser() -> Denoiser:
    return as_denoiser(load_model("ddnm-small-32"))


def mean_psnr(estimate: torch.Tensor, x: torch.Tensor) -> float:
    return float(
        np.mean([psnr(to_uint8(e), to_uint8(t)) for e, t in zip(estimate, x, strict=True)])
    )


@pytest.mark.parametrize(
    ("options", "samples"),
    [
        (SamplerOptions(eta=1.0, clip_x0=True, travel_length=10, travel_repeat=3), 1),
        (SamplerOptions(eta=1.0, clip_x0=True), 4),
    ],
    ids=["time_travel", "mean_of_4"],
)
def test_colorization_beats_the_grey_image(
    denoiser: Denoiser, options: SamplerOptions, samples: int
) -> None:
    x = held_out_crops()
    A = Colorization()
    y = A.A(x)
    generator = torch.Generator().manual_seed(0)
    x0 = posterior_mean(denoiser, linear_schedule(), A, y, options, samples, generator=generator)
    restored = as_image(A, x0, y, 0.0)
    assert consistency(A, restored, y) < 1e-4
    assert mean_psnr(restored, x) > mean_psnr(A.A_pinv(y), x)
