"""Held-out restoration quality of a model: DDNM against the A⁺y baseline.

Crops: `--crops` 32 x 32 crops (fixed positions from `--seed`) of images never seen in training
(skimage.data astronaut, coffee and chelsea, box-downscaled by 4 so that a crop holds structure).
Tasks, all noise-free (sigma_y = 0): 4x box super-resolution, inpainting of a random 50 % pixel
mask (one fixed mask), colorization. For every crop and task it records PSNR and SSIM (of the
8-bit images) of A⁺y and of DDNM, and the consistency figure ||A x0 - y|| / ||y|| of the DDNM
result. DDNM runs twice: as the paper runs it, and with x_{0|t} clipped to [-1, 1] before the
range-space correction (DDPM's `clip_denoised`, here as a denoiser wrapper: see `clip_x0`).
Writes `quality.md` and the contact sheet `quality_sheet.png` (per task, rows of
degraded | A⁺y | DDNM | DDNM, x0 clipped | truth) into `--out`.

    python bench/quality.py [--model ddnm-small-32] [--steps 100] [--out bench]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image
from torch import Tensor

from ddnm.commands.restore import load_model
from ddnm.imaging import to_tensor, to_uint8
from ddnm.metrics import psnr, ssim
from ddnm.models.adapters import as_denoiser
from ddnm.operators import Colorization, Inpainting, SuperResolution
from ddnm.operators.base import LinearOperator
from ddnm.sampling import Denoiser, SamplerOptions, sample
from ddnm.schedules import Schedule, linear_schedule

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


def clip_x0(denoiser: Denoiser, schedule: Schedule) -> Denoiser:
    """The denoiser whose ε implies x_{0|t} = clip(x_{0|t}, -1, 1): the sampler's Alg. 1 line 4
    then yields the clipped estimate, i.e. ε' = (x_t - sqrt(ᾱ_t) clip(x_{0|t})) / sqrt(1 - ᾱ_t)."""

    def clipped(x_t: Tensor, t: Tensor) -> Tensor:
        eps = denoiser(x_t, t)
        alpha_bar = schedule.alpha_bar_table.to(x_t)[t.long() + 1].view(-1, 1, 1, 1)
        x0 = (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
        return (x_t - alpha_bar.sqrt() * x0.clamp(-1, 1)) / (1 - alpha_bar).sqrt()

    return clipped


def degraded_view(operator: LinearOperator, x: Tensor) -> Tensor:
    """What the observation looks like at x's size: nearest-upsampled for super-resolution,
    missing pixels black for inpainting, the grey image for colorization."""
    if isinstance(operator, SuperResolution):
        return operator.A(x).repeat_interleave(4, -1).repeat_interleave(4, -2)
    if isinstance(operator, Inpainting):
        m = operator.mask
        return x * m - (1 - m)
    return operator.A(x).expand_as(x)


def restore(task: Task, y: Tensor, denoiser: Denoiser, args: argparse.Namespace) -> Tensor:
    options = SamplerOptions(steps=args.steps, eta=args.eta)
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        return sample(denoiser, linear_schedule(), task.operator, y, options, generator=generator)


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


def evaluate(task: Task, x: Tensor, denoiser: Denoiser, args: argparse.Namespace) -> dict:
    """Scores of A⁺y, DDNM and DDNM with clipped x0 for one task, and the contact-sheet columns."""
    y = task.operator.A(x)
    estimates = {"A⁺y": task.operator.A_pinv(y)}
    start = time.perf_counter()
    estimates["DDNM"] = restore(task, y, denoiser, args)
    seconds = time.perf_counter() - start
    estimates["DDNM, x0 clipped"] = restore(task, y, clip_x0(denoiser, linear_schedule()), args)
    return {
        "scores": {name: scores(task, x, y, e) for name, e in estimates.items()},
        "seconds": seconds,
        "sheet": [degraded_view(task.operator, x), *estimates.values(), x],
    }


def contact_sheet(results: dict[str, dict], path: Path) -> None:
    """Per task SHEET_ROWS rows of degraded | A⁺y | DDNM | truth, magnified ZOOM times."""
    rows = []
    for result in results.values():
        for i in range(SHEET_ROWS):
            tiles = [to_uint8(column[i]) for column in result["sheet"]]
            gap = np.full((SIZE, 2, 3), 255, np.uint8)
            rows.append(np.concatenate([t for tile in tiles for t in (tile, gap)], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    sheet = np.concatenate(rows, axis=0)
    Image.fromarray(sheet).resize(
        (sheet.shape[1] * ZOOM, sheet.shape[0] * ZOOM), Image.Resampling.NEAREST
    ).save(path)


def summary_row(task: str, method: str, rows: list[dict], baseline: list[dict]) -> str:
    def mean(key: str) -> float:
        return statistics.fmean(row[key] for row in rows)

    wins = sum(r["psnr"] > b["psnr"] for r, b in zip(rows, baseline, strict=True))
    better = "" if method == "A⁺y" else f"{wins} / {len(rows)}"
    worst = max(row["consistency"] for row in rows)
    return (
        f"| {task} | {method} | {mean('psnr'):.2f} | {mean('ssim'):.3f} | {better} | {worst:.1e} |"
    )


def report(results: dict[str, dict], args: argparse.Namespace, n: int) -> str:
    lines = [
        "# Held-out restoration quality",
        "",
        f"Model `{args.model}`, {n} held-out 32 x 32 crops ({', '.join(HELD_OUT)} from "
        f"skimage.data, downscaled {DOWNSCALE}x; never in the training set), DDNM with "
        f"{args.steps} steps, eta {args.eta}, sigma_y 0, seed {args.seed}. PSNR / SSIM on the "
        "8-bit images, mean over crops; consistency = ||A x0 - y|| / ||y|| before 8-bit "
        "rounding, max over crops; 'better' counts the crops where the method's PSNR beats "
        "A⁺y's. 'x0 clipped': x_{0|t} limited to [-1, 1] before the range-space correction.",
        "",
        "Regenerate: `python bench/quality.py "
        f"--model {args.model} --steps {args.steps} --crops {args.crops} --seed {args.seed}`",
        "",
        "| task | method | PSNR (dB) | SSIM | better than A⁺y (PSNR) | consistency (max) |",
        "|---|---|---|---|---|---|",
    ]
    for task, result in results.items():
        baseline = result["scores"]["A⁺y"]
        for method, rows in result["scores"].items():
            lines.append(summary_row(task, method, rows, baseline))
    times = ", ".join(f"{task}: {r['seconds']:.0f} s" for task, r in results.items())
    lines += [
        "",
        f"Time of one DDNM run over all {n} crops (one batch, {args.threads} CPU thread(s)): "
        f"{times}.",
        "",
        "Contact sheet `quality_sheet.png`: per task (in the order above) "
        f"{SHEET_ROWS} crops, columns degraded | A⁺y | DDNM | DDNM, x0 clipped | truth.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ddnm-small-32")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eta", type=float, default=0.85)
    parser.add_argument("--crops", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = held_out_crops(args.crops, args.seed)
    denoiser = as_denoiser(load_model(args.model))
    results = {}
    for task in tasks(args.seed):
        results[task.name] = evaluate(task, x, denoiser, args)
        print(f"{task.name}: {results[task.name]['seconds']:.0f} s", flush=True)
    text = report(results, args, x.shape[0])
    (args.out / "quality.md").write_text(text)
    contact_sheet(results, args.out / "quality_sheet.png")
    print(text)


if __name__ == "__main__":
    main()
