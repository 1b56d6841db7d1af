"""The task spec: one restoration job, as the API receives it and the worker runs it.

A spec names the degradation chain in the order the degradations were applied to the clean image x
(the worker composes the operators in that order), and the sampler settings (paper defaults:
100 steps, eta 0.85, no time travel, sigma_y = 0; the service also clips x_{0|t} to the data range
by default, and `samples` > 1 returns the mean of that many restorations, the estimate of highest
expected PSNR: see `ddnm.sampling.posterior_mean`):

    {"degradations": [{"op": "inpaint"}, {"op": "grayscale"},
                      {"op": "downsample", "factor": 4, "filter": "box"}],
     "sigma_y": 0.0, "steps": 100, "eta": 0.85, "travel": {"length": 1, "repeat": 1},
     "clip_x0": true, "samples": 1, "seed": null, "model": null, "class_label": null,
     "guidance_scale": 0.0, "evaluate": false, "priority": 0, "deadline_s": null}

Geometry: shapes are (C, H, W). x is the clean colour image (3, H, W); y the observation the chain
makes of it, an image for every op but `cs` (whose coefficients are not an image, so a chain ending
in `cs` needs evaluate mode). With `evaluate` the uploaded image is x itself: the worker applies the
chain (adding sigma_y noise) and reports PSNR / SSIM of the restoration against it.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.tiling import TilePlan, plan_tiles

Shape = tuple[int, int, int]  # (C, H, W)

MAX_STEPS = 1000  # the schedules' T: at most one sampling step per diffusion timestep
MAX_SAMPLES = 16  # restorations averaged by one job (each costs a full run)
WHOLE_MULTIPLE = 8  # the networks halve the image three times: a whole image's sides divide by 8


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def apply(self, shape: Shape) -> Shape:
        """Shape of this op's output for an input of `shape`; ValueError if it cannot take it."""
        return shape


class Downsample(_Op):
    """Super-resolution: y is x reduced `factor` times by a box (block mean) or bicubic filter."""

    op: Literal["downsample"]
    factor: int = Field(ge=2, le=64)
    filter: Literal["box", "bicubic"] = "box"

    def apply(self, shape: Shape) -> Shape:
        c, h, w = shape
        if h % self.factor or w % self.factor:
            raise ValueError(
                f"downsample factor {self.factor} does not divide the image size {h}x{w}; "
                f"use a factor that divides both sides"
            )
        return c, h // self.factor, w // self.factor


class Blur(_Op):
    """Deblurring: y is x blurred (same size) by a separable kernel.

    gaussian: std `sigma` pixels; uniform: a `size` x `size` box; anisotropic: an axis-aligned
    Gaussian with stds `sigma_rows` (vertical) and `sigma_cols` (horizontal). `size` is the odd
    side length (default: 2 * ceil(3 sigma) + 1 for Gaussians, 9 for the box). `boundary`: what
    the blur sees beyond the border, "reflect" (the image mirrored, as a camera or an editor
    blurs a photograph) or "zero" (mid-grey, the paper's and the reference code's convention).
    """

    op: Literal["blur"]
    kernel: Literal["gaussian", "uniform", "anisotropic"] = "gaussian"
    size: int | None = Field(default=None, ge=1, le=63)
    sigma: float = Field(default=2.0, gt=0.0, le=10.0)
    sigma_rows: float = Field(default=4.0, gt=0.0, le=10.0)
    sigma_cols: float = Field(default=1.0, gt=0.0, le=10.0)
    boundary: Literal["reflect", "zero"] = "reflect"

    @model_validator(mode="after")
    def _odd_size(self) -> Blur:
        if self.size is not None and self.size % 2 == 0:
            raise ValueError(f"blur size must be odd, got {self.size}")
        return self

    @property
    def kernel_size(self) -> tuple[int, int]:
        """(rows, cols) of the kernel: `size`, else the default of its kind (the rule of
        ddnm.operators.gaussian_taps)."""
        if self.size is not None:
            return self.size, self.size
        if self.kernel == "uniform":
            return 9, 9
        sigmas = (
            (self.sigma, self.sigma)
            if self.kernel == "gaussian"
            else (self.sigma_rows, self.sigma_cols)
        )
        return tuple(2 * math.ceil(3 * s) + 1 for s in sigmas)  # type: ignore[return-value]

    def apply(self, shape: Shape) -> Shape:
        rows, cols = self.kernel_size
        if rows > shape[1] or cols > shape[2]:
            raise ValueError(
                f"the {cols}x{rows} blur kernel is larger than the {shape[2]}x{shape[1]} image "
                "it blurs; use a smaller sigma or size, or a larger image"
            )
        return shape


class Grayscale(_Op):
    """Colorization: y (1, H, W) is the mean of x's three channels."""

    op: Literal["grayscale"]

    def apply(self, shape: Shape) -> Shape:
        if shape[0] != 3:
            raise ValueError("grayscale needs a colour (3-channel) image; use it once per chain")
        return 1, shape[1], shape[2]


class Inpaint(_Op):
    """Inpainting: y keeps the pixels where the uploaded mask is white (1 = known)."""

    op: Literal["inpaint"]


class CompressedSensing(_Op):
    """Compressed sensing: keep a `ratio` of the orthonormal Walsh-Hadamard coefficients of the
    whole image (H * W a power of two) or of each `block_size` x `block_size` tile."""

    op: Literal["cs"]
    ratio: float = Field(gt=0.0, le=1.0)
    kind: Literal["walsh_hadamard", "block"] = "walsh_hadamard"
    block_size: int = Field(default=32, ge=2, le=256)

    @model_validator(mode="after")
    def _power_of_two(self) -> CompressedSensing:
        if not _power_of_two(self.block_size):
            raise ValueError(f"cs block_size must be a power of two, got {self.block_size}")
        return self

    def apply(self, shape: Shape) -> Shape:
        _, h, w = shape
        n = h * w if self.kind == "walsh_hadamard" else self.block_size**2
        if self.kind == "walsh_hadamard" and not _power_of_two(n):
            raise ValueError(f"cs walsh_hadamard needs H * W a power of two, got {h}x{w}")
        if self.kind == "block" and (h % self.block_size or w % self.block_size):
            raise ValueError(
                f"cs block_size {self.block_size} does not divide the image size {h}x{w}"
            )
        if self.ratio * n < 1:
            raise ValueError(f"cs ratio {self.ratio} keeps no coefficient of {n}; use >= 1/{n}")
        return shape


QUANTIZATION_SIGMA_Y = 1 / (255 * math.sqrt(12))  # std of rounding to 8 bits, pixel scale
BLUR_SIGMA_Y = 0.01  # measured best for real blurred JPEGs (README, "Real photographs")


TIME_TRAVEL = {"eta": 1.0, "travel": {"length": 10, "repeat": 3}}
PRESETS: dict[str, dict[str, Any]] = {
    # a small grey print with scratches and stains on it, as received: the damage mask is at the
    # print's own size. The invented colour is a lottery for one draw: time travel and the mean
    # of 4 draws beat biharmonic inpainting + bicubic on 6 of 6 held-out cases (3 photos x 2
    # seeds, 32 x 64, measured when the preset was chosen), time travel alone on 3, the mean of 4
    # alone on 5; bench/real_photos.md has the preset against the classical route
    "old_photo": {
        "degradations": [
            {"op": "downsample", "factor": 2},
            {"op": "grayscale"},
            {"op": "inpaint"},
        ],
        **TIME_TRAVEL,
        "samples": 4,
    },
    "upscale_2x": {"degradations": [{"op": "downsample", "factor": 2}]},
    "upscale_4x": {"degradations": [{"op": "downsample", "factor": 4}]},
    "colorize": {"degradations": [{"op": "grayscale"}], **TIME_TRAVEL},
    "inpaint": {"degradations": [{"op": "inpaint"}]},
}


def default_sigma_y(ops: list[str | None], evaluate: bool) -> float:
    """sigma_y of a spec that names none. Evaluate mode: 0 (the worker measures the clean image
    itself, noise-free). An uploaded observation is at least rounded to 8 bits, which DDNM+ then
    treats as noise; a blur amplifies that and any compression noise, and on real blurred JPEGs
    0.01 restored best of 0, 0.0011, 0.003, 0.01, 0.02 and 0.04."""
    if evaluate:
        return 0.0
    return BLUR_SIGMA_Y if "blur" in ops else QUANTIZATION_SIGMA_Y


def _op_name(d: Any) -> str | None:
    return d.get("op") if isinstance(d, dict) else getattr(d, "op", None)


def _local(d: _Op) -> bool:
    """Whether an op restricts exactly to a window (each pixel of y depends on one block of x)."""
    return isinstance(d, Grayscale | Inpaint | Denoise) or (
        isinstance(d, Downsample) and d.filter == "box"
    )


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


class Denoise(_Op):
    """Denoising: y = x + noise of std sigma_y (the operator is the identity)."""

    op: Literal["denoise"]


Degradation = Annotated[
    Downsample | Blur | Grayscale | Inpaint | CompressedSensing | Denoise,
    Field(discriminator="op"),
]


class Travel(BaseModel):
    """Time travel (paper Sec. 3.4): jump back `length` steps, `repeat` - 1 extra times."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    length: int = Field(default=1, ge=1)
    repeat: int = Field(default=1, ge=1, le=10)


class TaskSpec(BaseModel):
    """One restoration job (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, protected_namespaces=())

    degradations: list[Degradation] = Field(min_length=1, max_length=8)
    sigma_y: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="noise std, pixel scale [0, 1]; when not given: 0 in evaluate mode, else "
        f"{BLUR_SIGMA_Y} for chains with a blur and the 8-bit rounding noise "
        f"{QUANTIZATION_SIGMA_Y:.5f} for the others (see default_sigma_y)",
    )
    steps: int = Field(default=100, ge=1, le=MAX_STEPS)
    eta: float = Field(default=0.85, ge=0.0, le=1.0)
    travel: Travel = Travel()
    clip_x0: bool = Field(default=True, description="clip x_{0|t} to [-1, 1] at every step")
    samples: int = Field(
        default=1, ge=1, le=MAX_SAMPLES, description="restorations averaged into the result"
    )
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    model: str | None = Field(default=None, min_length=1, max_length=100)
    class_label: int | None = Field(default=None, ge=0, le=999)
    guidance_scale: float = Field(default=0.0, ge=0.0, le=100.0)
    evaluate: bool = False
    preset: Literal["old_photo", "upscale_2x", "upscale_4x", "colorize", "inpaint"] | None = Field(
        default=None, description="a common job: fills the fields the spec leaves out (PRESETS)"
    )
    tiling: Literal["fused", "mask_shift", "whole"] = Field(
        default="fused",
        description="how an image larger than the model is restored (see contract.tiling)",
    )
    overlap: int | None = Field(
        default=None, ge=0, le=1024, description="window overlap in pixels (half the window)"
    )
    priority: int = Field(
        default=0, ge=0, le=9, description="a worker whose batch is full serves higher first"
    )
    deadline_s: float | None = Field(
        default=None,
        gt=0,
        le=7 * 24 * 3600,
        description="seconds after submission by which the job must start, else it ends expired",
    )

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        """A `preset` fills the fields it names that the spec leaves out (PRESETS); then a spec
        that names no sigma_y gets `default_sigma_y` of its chain, written into it (the job
        record then says which sigma_y ran)."""
        if not isinstance(data, dict):
            return data
        preset = PRESETS.get(data.get("preset"), {})  # type: ignore[arg-type]
        data = {**preset, **{k: v for k, v in data.items() if v is not None}}
        if data.get("sigma_y") is None:
            ops = [_op_name(d) for d in data.get("degradations") or []]
            data["sigma_y"] = default_sigma_y(ops, bool(data.get("evaluate")))
        return data

    @model_validator(mode="after")
    def _check_chain(self) -> TaskSpec:
        ops = [d.op for d in self.degradations]
        for once in ("inpaint", "grayscale", "cs"):
            if ops.count(once) > 1:
                raise ValueError(f"{once} may appear once in degradations, got {ops.count(once)}")
        if "cs" in ops and ops[-1] != "cs":
            raise ValueError("cs must be the last degradation (its coefficients are not an image)")
        if "cs" in ops and not self.evaluate:
            raise ValueError(
                "cs coefficients cannot be uploaded as an image: send the clean image with "
                '"evaluate": true and the worker measures it'
            )
        if not _exact_chain(self.degradations):
            chain = " -> ".join(ops)
            raise ValueError(
                f"no exact pseudo-inverse is known for the chain {chain}, and DDNM needs one: "
                "besides grayscale and denoise, a chain may combine downsample and blur, or "
                "inpaint and box downsample, or hold one other op"
            )
        # the rule of ddnm.schedules.check_travel
        if self.travel.repeat > 1 and self.travel.length >= self.steps:
            raise ValueError(
                f"travel.length must be in [1, steps - 1] = [1, {self.steps - 1}], "
                f"got {self.travel.length}"
            )
        if self.guidance_scale > 0 and self.class_label is None:
            raise ValueError("guidance_scale > 0 needs a class_label to guide towards")
        return self

    @property
    def has_mask(self) -> bool:
        return any(d.op == "inpaint" for d in self.degradations)

    def y_shape(self, x_shape: Shape) -> Shape:
        """Shape of the observation of an image of x_shape; ValueError naming the op that
        cannot take its input."""
        shape = x_shape
        for d in self.degradations:
            shape = d.apply(shape)
        return shape

    def upload_shape(self, x_shape: Shape) -> Shape:
        """Shape of the image to upload for a restoration of x_shape: x itself in evaluate mode,
        else the observation y."""
        y_shape = self.y_shape(x_shape)
        return x_shape if self.evaluate else y_shape

    def x_shape(self, upload_size: tuple[int, int]) -> Shape:
        """Shape of the restored image for an upload of (height, width): the upload's own size
        in evaluate mode, else the observation's scaled up by the chain's downsampling factors
        (the inverse of `upload_shape`); ValueError if the chain cannot take that image."""
        scale = 1 if self.evaluate else self.factor
        shape = (3, upload_size[0] * scale, upload_size[1] * scale)
        self.y_shape(shape)
        return shape

    @property
    def factor(self) -> int:
        """The chain's downsampling factor (the side of one block of y in x's pixels)."""
        return math.prod(d.factor for d in self.degradations if isinstance(d, Downsample))

    @property
    def network_calls(self) -> int:
        """Network evaluations of one run: one per step, and time travel's re-sampling (each of
        repeat - 1 climbs at every jump point 0, length, ... below steps - length re-runs
        `length` steps; the rule of ddnm.schedules.timestep_pairs)."""
        length, repeat = self.travel.length, self.travel.repeat
        jumps = len(range(0, self.steps - length, length)) if repeat > 1 else 0
        return self.steps + (repeat - 1) * length * jumps

    def plan(self, x_shape: Shape, window: int) -> TilePlan | None:
        """The windows of a restoration of x_shape by a model of native side `window`: None
        when the network runs once on the whole image (the native size, or tiling "whole").
        ValueError saying what to change when the chain or size cannot be tiled."""
        _, h, w = x_shape
        if (h, w) == (window, window):
            return None
        if self.tiling == "whole":
            if h % WHOLE_MULTIPLE or w % WHOLE_MULTIPLE:
                raise ValueError(
                    f"tiling whole runs the network on the whole {w}x{h} image, whose sides must "
                    f"be divisible by {WHOLE_MULTIPLE}; use tiling fused or mask_shift"
                )
            return None
        overlap = window // 2 if self.overlap is None else self.overlap
        plan = plan_tiles(h, w, window, overlap, self.factor)
        local = all(_local(d) for d in self.degradations)
        if self.tiling == "mask_shift" and not local:
            raise ValueError(
                "tiling mask_shift restricts the chain to each window, which is exact for box "
                'downsample, grayscale, inpaint and denoise only; use tiling "fused"'
            )
        if plan.canvas != (h, w) and not local:
            raise ValueError(
                f"a {w}x{h} image is smaller than the model's {window}x{window} window and "
                "padding it is exact only for box downsample, grayscale, inpaint and denoise; "
                'use a larger image or tiling "whole"'
            )
        return plan

    def network_evaluations(self, x_shape: Shape, window: int, plan: TilePlan | None) -> int:
        """Predicted cost in window-sized network evaluations of a restoration of x_shape with
        `plan` (`self.plan(x_shape, window)`): windows (the whole image counts as its area in
        windows) x network calls of one run x samples."""
        windows = len(plan.boxes) if plan else -(-x_shape[1] * x_shape[2] // window**2)
        return windows * self.network_calls * self.samples

    def mask_size(self, x_shape: Shape) -> tuple[int, int] | None:
        """(height, width) the inpainting mask must have (the image size where inpaint acts)."""
        shape = x_shape
        for d in self.degradations:
            if d.op == "inpaint":
                return shape[1], shape[2]
            shape = d.apply(shape)
        return None


def _exact_chain(degradations: list[Degradation]) -> bool:
    """Whether ddnm.operators.compose knows the chain's exact pseudo-inverse: grayscale acts on
    channels and denoise is the identity; the spatial ops must fuse into one operator."""
    spatial = [d for d in degradations if not isinstance(d, Grayscale | Denoise)]
    separable = all(isinstance(d, Downsample | Blur) for d in spatial)
    masked_pooling = all(
        isinstance(d, Inpaint) or (isinstance(d, Downsample) and d.filter == "box") for d in spatial
    )
    return len(spatial) <= 1 or separable or masked_pooling
