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
The result is saved as the worker saves it (`ddnm.tasks.as_image`: in [0, 255], consistent with y
where the range allows), and the command prints its consistency figure ||A x0 - y|| / ||y|| and,
with --evaluate or --simulate, PSNR / SSIM against the clean image.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor, nn


DEFAULT_MODEL = "ddnm-small-32"
SUPPORTED_OPS = ("downsample", "blur", "grayscale", "inpaint", "denoise")
SAMPLER_SETTINGS = ("sigma_y", "steps", "eta", "travel", "samples", "clip_x0")  # spec fields


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
    # sampler settings: the task spec's defaults unless given (contract.spec.TaskSpec)
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


def read_observation(image: np.ndarray, grey: bool) -> Tensor:
    """y in image layout from an image file's pixels: the channel mean when the chain ends grey."""
    from ddnm.imaging import to_tensor

    y = to_tensor(image)
    return y.mean(dim=1, keepdim=True) if grey else y


def load_model(model: str, model_dir: Path | None = None) -> nn.Module:
    """A registered model by name (downloaded ones looked up in `model_dir`), or a .safetensors
    file whose header holds its config."""
    from ddnm import models

    path = Path(model)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if "config" not in metadata:
            raise ValueError(f"{path} has no network config in its header; use a model name")
        config = json.loads(metadata["config"])
        return models.load_network(path, arch=metadata.get("arch", "adm"), config=config)
    network, _entry, _sha = models.load_registered(model, model_dir)
    return network


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from contract.spec import Downsample, TaskSpec
    from ddnm.imaging import load_image, load_mask, mask_to_tensor, save_image, to_tensor, to_uint8
    from ddnm.metrics import psnr, ssim
    from ddnm.models.adapters import as_denoiser
    from ddnm.models.commands import model_dir
    from ddnm.operators import measure
    from ddnm.sampling import StepInfo, posterior_mean
    from ddnm.schedules import linear_schedule
    from ddnm.tasks import as_image, chain_operator, consistency, in_range, sampler_options

    given = {name: getattr(args, name) for name in SAMPLER_SETTINGS}
    if args.travel is not None:
        given["travel"] = parse_travel(args.travel)
    spec = TaskSpec.model_validate(
        {
            "degradations": [parse_op(op) for op in args.op],
            **{name: value for name, value in given.items() if value is not None},
            "seed": args.seed,
            "model": args.model,
        }
    )
    if spec.has_mask and args.mask is None:
        raise ValueError("--op inpaint needs --mask M.png (white = known pixel)")
    mask = mask_to_tensor(load_mask(args.mask)) if args.mask else None
    image = load_image(args.input)
    # the restored image is the input (--simulate) or the input scaled up by the downsamplings
    factors = [d.factor for d in spec.degradations if isinstance(d, Downsample)]
    scale = 1 if args.simulate else math.prod(factors)
    height, width = image.shape[0] * scale, image.shape[1] * scale
    operator = chain_operator(spec, (3, height, width), mask)
    generator = torch.Generator(args.device).manual_seed(args.seed)
    if args.simulate:
        y = measure(operator, to_tensor(image).to(args.device), spec.sigma_y, generator)
    else:
        y = read_observation(image, any(d.op == "grayscale" for d in spec.degradations))
        y = in_range(operator, y.to(args.device))
    _, h, w = operator.x_shape(y)
    if h % 8 or w % 8:
        raise ValueError(f"the restored image must have sides divisible by 8, got {h}x{w}")

    network = load_model(spec.model or DEFAULT_MODEL, model_dir(args))
    denoiser = as_denoiser(network, device=args.device)
    options = sampler_options(spec)
    bar = tqdm(desc="restore", unit="step")

    def progress(info: StepInfo) -> None:
        bar.total = info.total
        bar.update(1)

    with torch.no_grad():
        x0 = posterior_mean(
            denoiser,
            linear_schedule(),
            operator,
            y,
            options,
            spec.samples,
            generator=generator,
            callback=progress,
        )
    bar.close()
    x0 = as_image(operator, x0, y, spec.sigma_y).cpu()
    save_image(x0, args.output)
    print(
        f"wrote {args.output} ({w}x{h}); consistency ||A x0 - y|| / ||y|| = "
        f"{consistency(operator, x0, y.cpu()):.2e}"
    )
    truth = image if args.simulate else (load_image(args.evaluate) if args.evaluate else None)
    if truth is not None:
        restored = to_uint8(x0)
        if truth.shape != restored.shape:
            raise ValueError(f"--evaluate image is {truth.shape}, the result {restored.shape}")
        value = psnr(restored, truth)
        print(f"PSNR {value:.2f} dB" if math.isfinite(value) else "PSNR inf", end="")
        print(f", SSIM {ssim(restored, truth):.4f}")
    return 0
