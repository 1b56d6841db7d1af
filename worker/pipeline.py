"""One job, from the spec and the uploaded bytes to the result: spec -> operator and options ->
`ddnm.sampling.posterior_mean` (one `sample` run unless the spec asks for more) -> PNG,
consistency and (evaluate mode) PSNR / SSIM.

The sampler's x̂ becomes an image in [-1, 1] by `ddnm.tasks.as_image` (which keeps A x = y where
the box allows it).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from contract.spec import Shape, TaskSpec
from ddnm import imaging, metrics, operators
from ddnm.sampling import StepInfo, posterior_mean
from ddnm.tasks import as_image, chain_operator, consistency, in_range, sampler_options
from worker.models import ServedModel


@dataclass(frozen=True)
class Restoration:
    png: bytes
    consistency: float  # ||A x - y|| / ||y||
    psnr: float | None = None  # evaluate mode, against the uploaded image
    ssim: float | None = None

    def record_fields(self) -> dict[str, float]:
        """The job record fields it fills (contract.jobs.JobRecord)."""
        figures = {"consistency": self.consistency, "psnr": self.psnr, "ssim": self.ssim}
        return {k: v for k, v in figures.items() if v is not None}


def read_upload(data: bytes, channels: int) -> Tensor:
    """Uploaded image bytes -> (1, channels, H, W) float32 in [-1, 1] (alpha composited onto
    white). One channel is the mean of the three, what the grayscale operator makes of a colour
    image."""
    rgb = imaging.to_tensor(imaging.load_image(io.BytesIO(data)))  # type: ignore[arg-type]
    return rgb if channels == 3 else rgb.mean(dim=1, keepdim=True)


def read_mask(data: bytes) -> Tensor:
    """Uploaded mask bytes -> (H, W) float32, 1 = known (white) pixel."""
    return imaging.mask_to_tensor(imaging.load_mask(io.BytesIO(data)))  # type: ignore[arg-type]


def encode_png(x: Tensor) -> tuple[bytes, np.ndarray]:
    """(1, 3, H, W) in [-1, 1] -> PNG bytes and the (H, W, 3) uint8 image they hold."""
    image = imaging.to_uint8(x)
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    return png.getvalue(), image


def restore(
    model: ServedModel,
    spec: TaskSpec,
    image: bytes,
    mask: bytes | None,
    callback: Callable[[StepInfo], None] | None = None,
) -> Restoration:
    """Run the job `spec` on the uploaded `image` (and `mask`) with `model`."""
    assert spec.seed is not None
    generator = torch.Generator(model.device).manual_seed(spec.seed)
    n = model.info.image_size
    x_shape: Shape = (3, n, n)
    operator = chain_operator(spec, x_shape, None if mask is None else read_mask(mask))
    upload = read_upload(image, spec.upload_shape(x_shape)[0]).to(model.device)
    y = operators.measure(operator, upload, spec.sigma_y, generator) if spec.evaluate else upload
    y = in_range(operator, y)
    x = posterior_mean(
        model.denoiser(spec),
        model.schedule,
        operator,
        y,
        sampler_options(spec),
        spec.samples,
        generator=generator,
        callback=callback,
    )
    x = as_image(operator, x, y, spec.sigma_y)
    png, result = encode_png(x)
    fit = consistency(operator, x, y)
    if not spec.evaluate:
        return Restoration(png, fit)
    truth = imaging.to_uint8(upload)
    return Restoration(png, fit, metrics.psnr(result, truth), metrics.ssim(result, truth))
