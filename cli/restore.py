"""`ddnm restore`: run DDNM / DDNM+ locally on one image (no server).

    ddnm restore LOW.png --op downsample:4 -o OUT.png                 # 4x super-resolution
    ddnm restore GREY.png --op grayscale -o OUT.png                   # colorization
    ddnm restore HOLED.png --op inpaint --mask M.png -o OUT.png       # inpainting (white = known)
    ddnm restore PHOTO.png --op downsample:4 --simulate -o OUT.png    # degrade PHOTO, restore it
    ddnm restore GREY.png --op grayscale --eta 1 --travel 10:3 -o OUT.png   # with time travel
    ddnm restore GREY.png --op grayscale --samples 8 -o OUT.png       # mean of 8 restorations

IN.png is the observation y (as an image), unless --simulate: then IN.png is the clean image x, the
command forms y = A x (+ sigma_y noise) itself and evaluates the result against x. `--op` takes
`NAME` or `NAME:ARG` (downsample:FACTOR[:bicubic], blur:SIGMA for a Gaussian blur); repeated
--op form a chain in the order the degradations hit the image (e.g. --op inpaint --op grayscale
--op downsample:4). They are the degradations of the task spec (`contract.spec`), which validates
them and the sampler settings.
The job runs through the worker's pipeline (`pipeline.job`): the same size rule, the same result
(in [0, 255], consistent with y where the range allows); the command prints its consistency
figure ||A x0 - y|| / ||y|| and, with --evaluate or --simulate, PSNR / SSIM against the clean
image.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contract.spec import TaskSpec
    from pipeline.job import Restoration


DEFAULT_MODEL = "ddnm-small-32"
SUPPORTED_OPS = ("downsample", "blur", "grayscale", "inpaint", "denoise")
# spec fields given as flags of the same name
SPEC_FLAGS = ("sigma_y", "steps", "eta", "travel", "samples", "clip_x0", "tiling", "overlap")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "restore", help="restore one image with DDNM on this machine (no server)"
    )
    parser.add_argument("input", type=Path, help="the observation y as an image (see --simulate)")
    parser.add_argument(
        "--op",
        action="append",
        required=True,
        help="degradation (repeat for a chain): downsample:F[:bicubic], blur:SIGMA, grayscale, "
        "inpaint, denoise",
    )
    parser.add_argument("--mask", type=Path, help="inpainting mask image (white = known pixel)")
    add_spec_flags(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="registered model name or a .safetensors path"
    )
    parser.add_argument(
        "--model-dir", help="downloaded checkpoints (default: $DDNM_MODEL_DIR, as `ddnm models`)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="restored image path")
    parser.add_argument("--evaluate", type=Path, help="clean image: print PSNR / SSIM against it")
    parser.add_argument(
        "--simulate", action="store_true", help="IN is the clean image: degrade it, then restore"
    )
    parser.set_defaults(func=run)


def add_spec_flags(parser: argparse.ArgumentParser) -> None:
    """The task spec's settings (SPEC_FLAGS); the spec's defaults (contract.spec) unless given."""
    parser.add_argument("--sigma-y", type=float, help="noise std, pixel scale [0, 1] (0)")
    parser.add_argument("--steps", type=int, help="sampling steps (100)")
    parser.add_argument("--eta", type=float, help="share of fresh noise per step (0.85)")
    parser.add_argument(
        "--travel",
        metavar="L:R",
        help="time travel: jump back L steps, sample each stretch R times (1:1, none)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        help="average this many restorations: the estimate of highest expected PSNR (1)",
    )
    parser.add_argument(
        "--clip-x0",
        action=argparse.BooleanOptionalAction,
        help="clip x0|t to [-1, 1] at every step (on)",
    )
    parser.add_argument(
        "--tiling",
        choices=("fused", "mask_shift", "whole"),
        help="how a size other than the model's is restored (fused)",
    )
    parser.add_argument("--overlap", type=int, help="window overlap in pixels (half the window)")


def parse_op(text: str) -> dict[str, Any]:
    """`NAME[:ARG[:ARG]]` -> a degradation dict of the task spec."""
    name, *params = text.split(":")
    if name not in SUPPORTED_OPS:
        raise ValueError(f"--op must be one of {', '.join(SUPPORTED_OPS)}, got {name!r}")
    if name == "downsample":
        if not 1 <= len(params) <= 2 or not params[0].isdigit():
            raise ValueError(
                f"--op downsample takes FACTOR[:FILTER], e.g. downsample:4; got {text}"
            )
        return {"op": name, "factor": int(params[0]), "filter": params[1] if params[1:] else "box"}
    if name == "blur":
        if len(params) != 1:
            raise ValueError(f"--op blur takes SIGMA (Gaussian std in pixels), got {text!r}")
        return {"op": name, "kernel": "gaussian", "sigma": float(params[0])}
    if params:
        raise ValueError(f"--op {name} takes no argument, got {text!r}")
    return {"op": name}


def parse_travel(text: str) -> dict[str, int]:
    """`L:R` -> the task spec's travel settings."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"--travel takes L:R (jump length and repeats), e.g. 10:3; got {text!r}")
    return {"length": int(parts[0]), "repeat": int(parts[1])}


def task_spec(args: argparse.Namespace) -> TaskSpec:
    """The task spec of the command line: its ops, the sampler settings given (the spec's
    defaults for the others), --simulate as evaluate mode."""
    from contract.spec import TaskSpec

    given = {name: getattr(args, name) for name in SPEC_FLAGS}
    if args.travel is not None:
        given["travel"] = parse_travel(args.travel)
    return TaskSpec.model_validate(
        {
            "degradations": [parse_op(op) for op in args.op],
            **{name: value for name, value in given.items() if value is not None},
            "seed": args.seed,
            "model": args.model,
            "evaluate": args.simulate,
        }
    )


def plan_text(spec: TaskSpec, upload: Path, window: int) -> str:
    """How the image will be restored, e.g. "217 windows of 32x32 in 43 waves"."""
    from PIL import Image

    with Image.open(upload) as image:
        x_shape = spec.x_shape((image.height, image.width))
    plan = spec.plan(x_shape, window)
    if plan is None:
        return f"{x_shape[2]}x{x_shape[1]}, whole image"
    waves = f" in {len(plan.waves)} waves" if spec.tiling == "mask_shift" else ""
    return f"{x_shape[2]}x{x_shape[1]}, {len(plan.boxes)} windows of {window}x{window}{waves}"


def restore(args: argparse.Namespace, spec: TaskSpec) -> Restoration:
    """Run the job on this machine, with a progress bar over the sampler's transitions."""
    from tqdm import tqdm

    from cli.models import model_dir
    from ddnm.sampling import StepInfo
    from pipeline.job import restore as run_job
    from pipeline.models import load_named

    if spec.has_mask and args.mask is None:
        raise ValueError("--op inpaint needs --mask M.png (white = known pixel)")
    mask = args.mask.read_bytes() if args.mask else None
    model = load_named(spec.model or DEFAULT_MODEL, model_dir(args), args.device)
    bar = tqdm(desc=f"restore ({plan_text(spec, args.input, model.info.image_size)})", unit="step")

    def progress(info: StepInfo) -> None:
        bar.total = info.total
        bar.update(1)

    result = run_job(model, spec, args.input.read_bytes(), mask, callback=progress)
    bar.close()
    return result


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from ddnm.imaging import load_image
    from ddnm.metrics import psnr, ssim

    spec = task_spec(args)
    result = restore(args, spec)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result.image).save(args.output)
    height, width = result.image.shape[:2]
    print(
        f"wrote {args.output} ({width}x{height}); consistency ||A x0 - y|| / ||y|| = "
        f"{result.consistency:.2e}"
    )
    if args.evaluate is not None and not args.simulate:
        truth = load_image(args.evaluate)
        if truth.shape != result.image.shape:
            raise ValueError(f"--evaluate image is {truth.shape}, the result {result.image.shape}")
        result = replace(result, psnr=psnr(result.image, truth), ssim=ssim(result.image, truth))
    if result.psnr is not None:
        value = result.psnr
        print(f"PSNR {value:.2f} dB" if math.isfinite(value) else "PSNR inf", end="")
        print(f", SSIM {result.ssim:.4f}")
    return 0
