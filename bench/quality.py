"""Held-out restoration quality of a model: DDNM against the A⁺y baseline.

Crops: `--crops` 32 x 32 crops (fixed positions from `--seed`; the sampler draws from
`--draw-seed`, by default the same) of images never seen in training (skimage.data astronaut,
coffee and chelsea, box-downscaled by 4 so that a crop holds structure).
Tasks, all noise-free (sigma_y = 0): 4x box super-resolution, inpainting of a random 50 % pixel
mask (one fixed mask), colorization. For every crop and task it records PSNR and SSIM (of the
8-bit images) of A⁺y and of DDNM, and the consistency figure ||A x0 - y|| / ||y|| of the DDNM
result. DDNM runs four ways (see `methods`): with the paper's defaults; with x_{0|t} clipped to
[-1, 1] (`clip_x0`, the service's default); clipped with eta 1 and time travel; and clipped with
eta 1 as the mean of `--samples` draws (`ddnm.sampling.posterior_mean`).
Writes `quality.md` and the contact sheet `quality_sheet.png` (per task, rows of
degraded | A⁺y | the four DDNM results | truth) into `--out`.

    python bench/quality.py [--model ddnm-small-32] [--steps 100] [--samples 4] [--out bench]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image
from torch import Tensor

from ddnm.imaging import to_tensor, to_uint8
from ddnm.metrics import psnr, ssim
from ddnm.operators import Colorization, Inpainting, SuperResolution
from ddnm.operators.base import LinearOperator
from ddnm.sampling import EpsModel, SamplerOptions, posterior_mean
from ddnm.schedules import linear_schedule
from pipeline.models import load_named

HELD_OUT = ("astronaut", "coffee", "chelsea")
DOWNSCALE = 4
SIZE = 32
SHEET_ROWS = 4  # crops per task on the contact sheet
ZOOM = 3  # nearest-neighbour magnification on the sheet


@dataclass(frozen=True)
class Task:
    name: str
    operator: LinearOperator


def held_out_crops(count: int, seed: int) -> Tensor:
    """(count, 3, 32, 32) in [-1, 1]: crops spread evenly over the held-out images."""
    rng = np.random.default_rng(seed)
    crops = []
    for k in range(count):
        image = Image.fromarray(getattr(skimage.data, HELD_OUT[k % len(HELD_OUT)])())
        small = np.asarray(image.reduce(DOWNSCALE))
        top = int(rng.integers(0, small.shape[0] - SIZE + 1))
        left = int(rng.integers(0, small.shape[1] - SIZE + 1))
        crops.append(to_tensor(small[top : top + SIZE, left : left + SIZE]))
    return torch.cat(crops)


def tasks(seed: int) -> list[Task]:
    mask = torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) < 0.5
    return [
        Task("4x box super-resolution", SuperResolution(4)),
        Task("inpainting, 50 % random pixels", Inpainting(mask.float())),
        Task("colorization", Colorization()),
    ]


def degraded_view(operator: LinearOperator, x: Tensor) -> Tensor:
    """What the observation looks like at x's size: nearest-upsampled for super-resolution,
    missing pixels black for inpainting, the grey image for colorization."""
    if isinstance(operator, SuperResolution):
        return operator.A(x).repeat_interleave(4, -1).repeat_interleave(4, -2)
    if isinstance(operator, Inpainting):
        m = operator.mask
        return x * m - (1 - m)
    return operator.A(x).expand_as(x)


def methods(args: argparse.Namespace) -> dict[str, tuple[SamplerOptions, int]]:
    """The DDNM runs compared: name -> (options, number of draws averaged)."""
    paper = SamplerOptions(steps=args.steps, eta=args.eta)
    clipped = dataclasses.replace(paper, clip_x0=True)
    ancestral = dataclasses.replace(clipped, eta=1.0)
    travel = dataclasses.replace(
        ancestral, travel_length=args.travel_length, travel_repeat=args.travel_repeat
    )
    return {
        "DDNM": (paper, 1),
        "DDNM, clip": (clipped, 1),
        "DDNM, clip, η 1, travel": (travel, 1),
        f"DDNM, clip, η 1, mean of {args.samples}": (ancestral, args.samples),
    }


def restore(
    task: Task, y: Tensor, denoiser: EpsModel, options: SamplerOptions, samples: int, seed: int
) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return posterior_mean(
        denoiser, linear_schedule(), task.operator, y, options, samples, generator=generator
    )


def scores(task: Task, x: Tensor, y: Tensor, estimate: Tensor) -> list[dict[str, float]]:
    """Per crop: PSNR, SSIM (8-bit) and the consistency figure of an estimate of x."""
    rows = []
    for i in range(x.shape[0]):
        truth, image, yi = to_uint8(x[i]), to_uint8(estimate[i]), y[i : i + 1]
        residual = task.operator.A(estimate[i : i + 1]) - yi
        rows.append(
            {
                "psnr": psnr(image, truth),
                "ssim": ssim(image, truth),
                "consistency": float(residual.norm() / yi.norm()),
            }
        )
    return rows


def evaluate(task: Task, x: Tensor, denoiser: EpsModel, args: argparse.Namespace) -> dict:
    """Scores of A⁺y and of each DDNM method for one task, seconds per method, and the
    contact-sheet columns."""
    y = task.operator.A(x)
    estimates, seconds = {"A⁺y": task.operator.A_pinv(y)}, {}
    for name, (options, samples) in methods(args).items():
        start = time.perf_counter()
        estimates[name] = restore(task, y, denoiser, options, samples, args.draw_seed)
        seconds[name] = time.perf_counter() - start
    return {
        "scores": {name: scores(task, x, y, e) for name, e in estimates.items()},
        "seconds": seconds,
        "sheet": [degraded_view(task.operator, x), *estimates.values(), x],
    }


def contact_sheet(results: dict[str, dict], path: Path) -> None:
    """Per task SHEET_ROWS rows (fewer if there are fewer crops) of degraded | A⁺y | DDNM
    methods | truth, magnified ZOOM times."""
    rows = []
    for result in results.values():
        for i in range(min(SHEET_ROWS, len(result["sheet"][0]))):
            tiles = [to_uint8(column[i]) for column in result["sheet"]]
            gap = np.full((SIZE, 2, 3), 255, np.uint8)
            rows.append(np.concatenate([t for tile in tiles for t in (tile, gap)], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    sheet = np.concatenate(rows, axis=0)
    Image.fromarray(sheet).resize(
        (sheet.shape[1] * ZOOM, sheet.shape[0] * ZOOM), Image.Resampling.NEAREST
    ).save(path)


def summary_row(task: str, method: str, result: dict) -> str:
    rows, baseline = result["scores"][method], result["scores"]["A⁺y"]

    def mean(key: str) -> float:
        return statistics.fmean(row[key] for row in rows)

    wins = sum(r["psnr"] > b["psnr"] for r, b in zip(rows, baseline, strict=True))
    better = "" if method == "A⁺y" else f"{wins} / {len(rows)}"
    worst = max(row["consistency"] for row in rows)
    seconds = result["seconds"].get(method)
    time_s = "" if seconds is None else f"{seconds:.0f}"
    return (
        f"| {task} | {method} | {mean('psnr'):.2f} | {mean('ssim'):.3f} | {better} | "
        f"{worst:.1e} | {time_s} |"
    )


def report(results: dict[str, dict], args: argparse.Namespace, n: int) -> str:
    lines = [
        "# Held-out restoration quality",
        "",
        f"Model `{args.model}`, {n} held-out 32 x 32 crops ({', '.join(HELD_OUT)} from "
        f"skimage.data, downscaled {DOWNSCALE}x; never in the training set), DDNM with "
        f"{args.steps} steps, eta {args.eta}, sigma_y 0, seed {args.seed} (crops, mask), "
        f"draw seed {args.draw_seed}. PSNR / SSIM on the 8-bit images, mean over crops; "
        "consistency = ||A x0 - y|| / ||y|| before 8-bit rounding, max over crops; 'better' "
        "counts the crops where the method's PSNR beats A⁺y's; time: wall seconds for all "
        f"crops in one batch on {args.threads} CPU thread(s).",
        "",
        f"Methods: 'DDNM' is the paper's sampler (eta {args.eta}, no time travel, x_{{0|t}} "
        "not clipped), one draw. 'clip' limits x_{0|t} to [-1, 1] before the range-space "
        "correction (`clip_x0`, the service's default). 'η 1' steps with fresh noise only "
        "(ancestral sampling). 'travel' is time travel (paper Sec. 3.4) with jump length "
        f"l = {args.travel_length} steps and r = {args.travel_repeat} repeats (about "
        f"{args.travel_repeat} times the network calls of one run), one draw. "
        f"'mean of {args.samples}' averages that many draws (`samples` in the task spec, "
        "`ddnm.sampling.posterior_mean`): an estimate of the posterior mean E[x | y], which "
        "minimises the expected squared error; one draw is sharper but adds the posterior "
        "variance to its error.",
        "",
        "Regenerate: `python bench/quality.py "
        f"--model {args.model} --steps {args.steps} --samples {args.samples} "
        f"--travel-length {args.travel_length} --travel-repeat {args.travel_repeat} "
        f"--crops {args.crops} --seed {args.seed} --draw-seed {args.draw_seed} "
        f"--threads {args.threads}`",
        "",
        "| task | method | PSNR (dB) | SSIM | better than A⁺y (PSNR) | consistency (max) | "
        "time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, result in results.items():
        lines += [summary_row(task, method, result) for method in result["scores"]]
    columns = " | ".join(["degraded", *next(iter(results.values()))["scores"], "truth"])
    lines += [
        "",
        f"Contact sheet `quality_sheet.png`: per task (in the order above) {SHEET_ROWS} crops, "
        f"columns {columns}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ddnm-small-32")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eta", type=float, default=0.85)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--travel-length", type=int, default=10)
    parser.add_argument("--travel-repeat", type=int, default=3)
    parser.add_argument("--crops", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0, help="crop positions and the mask")
    parser.add_argument("--draw-seed", type=int, help="sampler draws (default: --seed)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    if args.draw_seed is None:
        args.draw_seed = args.seed
    torch.set_num_threads(args.threads)
    x = held_out_crops(args.crops, args.seed)
    denoiser = load_named(args.model, None).eps
    results = {}
    for task in tasks(args.seed):
        results[task.name] = evaluate(task, x, denoiser, args)
        print(task.name, results[task.name]["seconds"], flush=True)
    text = report(results, args, x.shape[0])
    (args.out / "quality.md").write_text(text)
    contact_sheet(results, args.out / "quality_sheet.png")
    print(text)


if __name__ == "__main__":
    main()
