"""One job, from the spec and the uploaded bytes to the result: spec -> operator and options ->
`ddnm.sampling.sample` -> PNG, consistency and (evaluate mode) PSNR / SSIM.

A PNG holds values in [0, 255] only, while x̂ from the sampler is unbounded (A x̂ = y fixes its
range-space part, not its range of values). Clipping alone would break A x̂ = y, so with
sigma_y = 0 the result is the image in [-1, 1] nearest to consistency (`into_box`): exactly
consistent when y has a preimage in the box, and as close as the box allows when it has none
(an 8-bit y of an ill-conditioned blur). With noise (sigma_y > 0) y is not consistent data, and
the result is clipped.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from contract.spec import Shape, TaskSpec
from ddnm import imaging, metrics, operators
from ddnm.operators.base import SVDOperator
from ddnm.sampling import StepInfo, sample
from ddnm.tasks import chain_operator, sampler_options
from worker.models import ServedModel

PROJECTION_ROUNDS = 200
PROJECTION_TOL = 1e-4  # max |A x - y| on [-1, 1], well under half an 8-bit level (3.9e-3)


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


def into_box(operator: SVDOperator, x: Tensor, y: Tensor) -> Tensor:
    """The image in [-1, 1] nearest to consistency: min ||A x - y||^2 over the box, by projected
    gradient with Nesterov momentum (FISTA, Beck & Teboulle 2009) started from clip(x), step
    1 / s_max^2 and A^T = V diag(s) U^T. When all non-zero singular values are equal (box
    downsampling, inpainting, colorization) a plain step is the range-space correction of Alg. 1
    line 5 followed by clipping."""
    s = operator.singular_values(tuple(x.shape[1:])).to(x)  # type: ignore[arg-type]
    step = 1.0 / s.max() ** 2
    x = v = x.clamp(-1.0, 1.0)
    momentum = 1.0
    for _ in range(PROJECTION_ROUNDS):
        if (operator.A(x) - y).abs().max() <= PROJECTION_TOL:
            break
        gradient = operator.V(s * operator.U_t(operator.A(v) - y))  # A^T (A v - y)
        x_next = (v - step * gradient).clamp(-1.0, 1.0)
        momentum_next = (1 + math.sqrt(1 + 4 * momentum**2)) / 2
        v = x_next + (momentum - 1) / momentum_next * (x_next - x)
        x, momentum = x_next, momentum_next
    return x


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
    # drop the entries of y that A ignores (e.g. the unknown pixels of inpainting), so that
    # ||A x - y|| measures consistency with the data A can explain
    y = operator.A(operator.A_pinv(y))
    x = sample(
        model.denoiser(spec),
        model.schedule,
        operator,
        y,
        sampler_options(spec),
        generator=generator,
        callback=callback,
    )
    if spec.sigma_y == 0 and isinstance(operator, SVDOperator):
        x = into_box(operator, x, y)
    x = x.clamp(-1.0, 1.0)
    consistency = float((operator.A(x) - y).norm() / y.norm().clamp_min(1e-12))
    png, result = encode_png(x)
    if not spec.evaluate:
        return Restoration(png, consistency)
    truth = imaging.to_uint8(upload)
    return Restoration(png, consistency, metrics.psnr(result, truth), metrics.ssim(result, truth))
