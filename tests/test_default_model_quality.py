"""The shipped default model on held-out photographs, colorization (the task that leaves the whole
colour to the model): time travel beats the grey image A⁺y in PSNR, keeping A x = y. The full
figures, the mean of several draws included, are in bench/quality.md; the presets' quality on
real photographs is tests/test_real_photos.py's."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from ddnm.imaging import to_tensor, to_uint8
from ddnm.metrics import psnr
from ddnm.operators import Colorization
from ddnm.results import as_image, consistency
from ddnm.sampling import EpsModel, SamplerOptions, posterior_mean
from ddnm.schedules import linear_schedule
from pipeline.models import load_named

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
def denoiser() -> EpsModel:
    return load_named("ddnm-small-32", None).eps


def mean_psnr(estimate: torch.Tensor, x: torch.Tensor) -> float:
    return float(
        np.mean([psnr(to_uint8(e), to_uint8(t)) for e, t in zip(estimate, x, strict=True)])
    )


def test_colorization_with_time_travel_beats_the_grey_image(denoiser: EpsModel) -> None:
    x = held_out_crops()
    A = Colorization()
    y = A.A(x)
    options = SamplerOptions(eta=1.0, clip_x0=True, travel_length=10, travel_repeat=3)
    generator = torch.Generator().manual_seed(0)
    x0 = posterior_mean(denoiser, linear_schedule(), A, y, options, 1, generator=generator)
    restored = as_image(A, x0, y, 0.0)
    assert consistency(A, restored, y) < 1e-4
    assert mean_psnr(restored, x) > mean_psnr(A.A_pinv(y), x)
