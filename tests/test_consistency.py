"""Consistency A x̂ = y of noise-free DDNM for every operator and a chain.

‖A x̂ - y‖ / ‖y‖ <= 1e-5 in float32, with the two fixture networks and with random networks whose
x0 estimates stay bounded, on a real photograph crop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from ddnm import operators as O
from ddnm.models import as_denoiser
from ddnm.sampling import SamplerOptions, sample
from ddnm.schedules import linear_schedule
from tests.conftest import FIXTURE_ARCHS, fixture_network
from tests.test_sampler import BoundedNet

SIZE = 32


def _photo() -> torch.Tensor:
    """(1, 3, 32, 32) crop of the astronaut photograph in [-1, 1]."""
    crop = data.astronaut()[100:228:4, 180:308:4].astype(np.float32) / 127.5 - 1
    return torch.from_numpy(crop).permute(2, 0, 1)[None].contiguous()


def _mask(seed: int = 0) -> torch.Tensor:
    """(32, 32) mask, 1 = known: a hole and scattered missing pixels, cutting 4x4 blocks."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(SIZE, SIZE, generator=g) > 0.3).float()
    mask[9:19, 5:23] = 0
    return mask


OPERATORS = {
    "sr_box_x4": lambda: O.SuperResolution(4),
    "sr_bicubic_x2": lambda: O.SuperResolution(2, filter="bicubic"),
    "deblur_gaussian": lambda: O.Deblur(O.gaussian_kernel(sigma=1.5, size=7)),
    "deblur_uniform": lambda: O.Deblur(O.uniform_kernel(size=5)),
    "deblur_reflect": lambda: O.Deblur(O.gaussian_kernel(sigma=1.5, size=7), boundary="reflect"),
    "deblur_anisotropic": lambda: O.Deblur(O.anisotropic_gaussian_kernel(2.0, 0.7, size=9)),
    "colorization": lambda: O.Colorization(),
    "inpainting": lambda: O.Inpainting(_mask()),
    "identity": lambda: O.Identity(),
    "cs_walsh_hadamard_25": lambda: O.CompressedSensing(0.25, seed=1, image_size=SIZE),
    "cs_block_50": lambda: O.CompressedSensing(0.5, kind="block", block_size=8, seed=2),
    "old_photo": lambda: O.compose(O.Inpainting(_mask(1)), O.Colorization(), O.SuperResolution(4)),
}


def _networks():
    yield "bounded_random", BoundedNet(seed=5)
    for name in FIXTURE_ARCHS:
        yield name, as_denoiser(fixture_network(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_noise_free_result_is_consistent(name):
    operator = OPERATORS[name]()
    y = operator.A(_photo())
    for net_name, denoiser in _networks():
        x_hat = sample(
            denoiser,
            linear_schedule(),
            operator,
            y,
            SamplerOptions(steps=5, eta=0.85),
            generator=torch.Generator().manual_seed(0),
        )
        residual = float((operator.A(x_hat) - y).norm() / y.norm())
        assert residual <= 1e-5, f"{name} with {net_name}: ‖A x̂ - y‖/‖y‖ = {residual:.2e}"
