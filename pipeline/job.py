"""One job, in two calls, for the worker and `ddnm restore` alike.

    job = prepare(model, spec, image, mask, callback)   spec + uploaded bytes -> a sampler run
    x = ddnm.sampling.finish(job.run, model.eps)         (or any driver that batches runs)
    result = job.finish(x)                               x̂ -> PNG, consistency, PSNR / SSIM

`restore` is the three in a row, one job on its own.

The restored size follows from the upload (`TaskSpec.x_shape`); the run is
`ddnm.sampling.mean_of_draws` of one run (the whole image, or its windows: `ddnm.tiling`, as the
spec's `tiling` says for sizes other than the native one), and x̂ becomes an
image in [-1, 1] by `ddnm.results.as_image` (which keeps A x = y where the box allows it).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from contract.spec import Shape, TaskSpec
from contract.tiling import TilePlan
from ddnm import imaging, metrics, operators, tiling
from ddnm.operators.base import LinearOperator
from ddnm.results import as_image, consistency, in_range
from ddnm.sampling import Run, StepInfo, finish, mean_of_draws, run
from pipeline.models import ServedModel
from pipeline.tasks import chain_operator, sampler_options

FUSED_WINDOWS = 64  # windows per network forward of the fused tiling (DDNM_FUSED_WINDOWS)


@dataclass(frozen=True)
class Restoration:
    png: bytes
    image: np.ndarray  # (H, W, 3) uint8, what `png` holds
    consistency: float  # ||A x - y|| / ||y||
    psnr: float | None = None  # evaluate mode, against the uploaded image
    ssim: float | None = None

    def record_fields(self) -> dict[str, float]:
        """The job record fields it fills (contract.jobs.JobRecord)."""
        figures = {"consistency": self.consistency, "psnr": self.psnr, "ssim": self.ssim}
        return {k: v for k, v in figures.items() if v is not None}


@dataclass(frozen=True)
class Job:
    """A prepared job: its sampler run, and what turns the run's x̂ into the result."""

    run: Run
    finish: Callable[[Tensor], Restoration]


def read_upload(data: bytes, channels: int) -> Tensor:
    """Uploaded image bytes -> (1, channels, H, W) float32 in [-1, 1] (alpha composited onto
    white). One channel is the mean of the three, what the grayscale operator makes of a colour
    image."""
    rgb = imaging.to_tensor(imaging.load_image(io.BytesIO(data)))  # type: ignore[arg-type]
    return rgb if channels == 3 else rgb.mean(dim=1, keepdim=True)


def read_mask(data: bytes) -> Tensor:
    """Uploaded mask bytes -> (H, W) float32, 1 = known (white) pixel."""
    return imaging.mask_to_tensor(imaging.load_mask(io.BytesIO(data)))  # type: ignore[arg-type]


def to_device(x: Tensor, device: torch.device) -> Tensor:
    """x on `device`; to a GPU through pinned host memory, so the copy runs asynchronously."""
    if device.type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def encode_png(x: Tensor) -> tuple[bytes, np.ndarray]:
    """(1, 3, H, W) in [-1, 1] -> PNG bytes and the (H, W, 3) uint8 image they hold."""
    image = imaging.to_uint8(x)
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    return png.getvalue(), image


def prepare(
    model: ServedModel,
    spec: TaskSpec,
    image: bytes,
    mask: bytes | None,
    callback: Callable[[StepInfo], None] | None = None,
    fused_windows: int = FUSED_WINDOWS,
) -> Job:
    """The job `spec` on the uploaded `image` (and `mask`): its run on `model`, and its finish.
    fused_windows: windows per network forward of the fused tiling (bounds device memory).
    Raises ValueError when the upload does not fit the spec."""
    assert spec.seed is not None
    generator = torch.Generator(model.device).manual_seed(spec.seed)
    upload = read_upload(image, 3)
    x_shape = spec.x_shape(tuple(upload.shape[2:]))  # type: ignore[arg-type]
    plan = spec.plan(x_shape, model.info.image_size)
    known = None if mask is None else read_mask(mask)
    operator = chain_operator(spec, x_shape, known)
    if spec.upload_shape(x_shape)[0] == 1:
        upload = upload.mean(dim=1, keepdim=True)
    upload = to_device(upload, model.device)
    y = operators.measure(operator, upload, spec.sigma_y, generator) if spec.evaluate else upload
    y = in_range(operator, y)
    draw = _draw(
        model, spec, plan, fused_windows, *_canvas(spec, plan, operator, x_shape, y, known)
    )
    run = mean_of_draws(draw, spec.samples, generator=generator, callback=callback)
    truth = imaging.to_uint8(upload) if spec.evaluate else None
    return Job(run, partial(_finish, operator, y, spec.sigma_y, truth))


def _canvas(
    spec: TaskSpec,
    plan: TilePlan | None,
    operator: LinearOperator,
    x_shape: Shape,
    y: Tensor,
    known: Tensor | None,
) -> tuple[LinearOperator, Tensor]:
    """The operator and y of the canvas a plan restores: the image's own, or, for a side
    shorter than the window, padded at the bottom and right (y replicated, the mask unknown
    there), so the padding is free for the model to fill and cropped afterwards."""
    if plan is None or plan.canvas == x_shape[1:]:
        return operator, y
    canvas: Shape = (3, *plan.canvas)
    (dh, dw) = (c - s for c, s in zip(plan.canvas, x_shape[1:], strict=True))
    y = F.pad(y, (0, dw // spec.factor, 0, dh // spec.factor), mode="replicate")
    if known is not None:
        mask_h, mask_w = spec.mask_size(canvas) or known.shape
        known = F.pad(known, (0, mask_w - known.shape[1], 0, mask_h - known.shape[0]))
    padded = chain_operator(spec, canvas, known)
    return padded, in_range(padded, y)


def _draw(
    model: ServedModel,
    spec: TaskSpec,
    plan: TilePlan | None,
    fused_windows: int,
    operator: LinearOperator,
    y: Tensor,
) -> Callable[[torch.Generator | None, Callable[[StepInfo], None] | None], Run]:
    """One draw of the job (the whole image, its fused windows or Mask-Shift) as a run."""
    options, labels, scales = sampler_options(spec), spec.class_label, spec.guidance_scale

    def draw(generator: torch.Generator | None, callback: Callable[[StepInfo], None] | None) -> Run:
        if plan is not None and spec.tiling == "mask_shift":
            return tiling.mask_shift_run(
                model.schedule, operator, y, options, plan, spec.factor,
                generator=generator, labels=labels, scales=scales, callback=callback,
            )  # fmt: skip
        whole = run(
            model.schedule, operator, y, options,
            generator=generator, labels=labels, scales=scales, callback=callback,
        )  # fmt: skip
        return whole if plan is None else tiling.fused_run(whole, plan.boxes, fused_windows)

    return draw


def restore(
    model: ServedModel,
    spec: TaskSpec,
    image: bytes,
    mask: bytes | None,
    callback: Callable[[StepInfo], None] | None = None,
    fused_windows: int = FUSED_WINDOWS,
) -> Restoration:
    """The job run on its own, to its end: `prepare`, then its run driven by `model`."""
    job = prepare(model, spec, image, mask, callback, fused_windows)
    return job.finish(finish(job.run, model.eps))


def _finish(
    operator: LinearOperator, y: Tensor, sigma_y: float, truth: np.ndarray | None, x: Tensor
) -> Restoration:
    """x̂ (1, 3, H', W') of the canvas, cropped to the image (1, 3, H, W) as the job's result:
    an image consistent with y where the box allows, its consistency figure and, against
    `truth`, PSNR / SSIM."""
    _, height, width = operator.x_shape(y)
    x = as_image(operator, x[..., :height, :width], y, sigma_y)
    png, image = encode_png(x)
    fit = consistency(operator, x, y)
    if truth is None:
        return Restoration(png, image, fit)
    return Restoration(png, image, fit, metrics.psnr(image, truth), metrics.ssim(image, truth))
