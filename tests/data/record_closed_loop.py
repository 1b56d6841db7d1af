"""Record `ddnm.sampling.sample` outputs on the reference network fixtures (closed_loop.npz).

The file was written by this script at the commit before the sampler became a steppable run
(c306680, when `sample` still called the network inside its loop); tests/test_run.py checks that
the run reproduces every output bit for bit. Running it again must rewrite the same values:

    PYTHONPATH=. .venv/bin/python tests/data/record_closed_loop.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from skimage import data

from ddnm import operators as O
from ddnm.models import as_denoiser, load_network
from ddnm.sampling import SamplerOptions, sample
from ddnm.schedules import linear_schedule
from tests.conftest import fixture_network
from tests.test_models_adapters import SMALL_CLASSIFIER

OUT = Path(__file__).with_name("closed_loop.npz")
CLASSIFIER_32 = {**SMALL_CLASSIFIER, "image_size": 32}


def random_weights(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn anew, 0.05 N(0, 1), from a generator seeded `seed`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return net


def small_classifier() -> torch.nn.Module:
    return random_weights(load_network(None, arch="adm_classifier", config=CLASSIFIER_32), 11)


def photos(batch: int = 1) -> torch.Tensor:
    """(batch, 3, 32, 32) in [-1, 1]: 4x box-reduced 32 x 32 crops of astronaut and coffee."""
    crops = []
    for k, image in enumerate([data.astronaut(), data.coffee()][:batch]):
        small = torch.from_numpy(image[:128, 64 * k : 64 * k + 128]).permute(2, 0, 1).float()
        small = torch.nn.functional.avg_pool2d(small[None], 4)
        crops.append(small / 127.5 - 1)
    return torch.cat(crops)


def mask(seed: int) -> torch.Tensor:
    return torch.rand(32, 32, generator=torch.Generator().manual_seed(seed)) > 0.5


def cases() -> dict[str, tuple]:
    """name -> (denoiser, operator, clean x, options)."""
    ddpm, guided = as_denoiser(fixture_network("ddpm_small")), fixture_network("guided_small")
    old_photo = O.compose(O.Inpainting(mask(1)), O.Colorization(), O.SuperResolution(2))
    guide = as_denoiser(
        guided,
        class_label=torch.tensor([3, 7]),
        classifier=small_classifier(),
        classifier_scale=2.0,
        schedule=linear_schedule(),
    )
    return {
        "ddpm_sr4_ddnm": (ddpm, O.SuperResolution(4), photos(), SamplerOptions(steps=10)),
        "guided_inpaint_plus_travel_clip": (
            as_denoiser(guided),
            O.Inpainting(mask(0)),
            photos(),
            SamplerOptions(steps=10, sigma_y=0.05, travel_length=3, travel_repeat=2, clip_x0=True),
        ),
        "ddpm_old_photo_plus_eta1": (
            ddpm,
            old_photo,
            photos(),
            SamplerOptions(steps=6, eta=1.0, sigma_y=0.02),
        ),
        "guided_classifier_deblur_batch2": (
            guide,
            O.Deblur(O.gaussian_kernel(1.5)),
            photos(2),
            SamplerOptions(steps=6),
        ),
    }


def record() -> dict[str, np.ndarray]:
    """The outputs, computed on one CPU thread (the summation order of a convolution, and so its
    last bits, depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outputs = {}
        for name, (denoiser, operator, x, options) in cases().items():
            y = operator.A(x)
            out = sample(
                denoiser,
                linear_schedule(),
                operator,
                y,
                options,
                generator=torch.Generator().manual_seed(0),
            )
            outputs[name] = out.numpy()
        return outputs
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    np.savez_compressed(OUT, **record())
    print(f"wrote {OUT}")
