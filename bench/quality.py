"""Held-out restoration quality of a model: DDNM against the A⁺y baseline.

Crops: `--crops` 32 x 32 crops (fixed positions from `--seed`) of images never seen in training
(skimage.data astronaut, coffee and chelsea, box-downscaled by 4 so that a crop holds structure).
Tasks, all noise-free (sigma_y = 0): 4x box super-resolution, inpainting of a random 50 % pixel
mask (one fixed mask), colorization. For every crop and task it records PSNR and SSIM (of the
8-bit images) of A⁺y and of DDNM, and the consistency figure ||A x0 - y|| / ||y|| of the DDNM
result. Writes `quality.md` and the contact sheet `quality_sheet.png` (per task, rows of
degraded | A⁺y | DDNM | truth) into `--out`.

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
from ddnm.sampling import SamplerOptions, sample
from ddnm.schedules import linear_schedule

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


def evaluate(task: Task, x: Tensor, denoiser: object, args: argparse.Namespace) -> dict:
    y = task.operator.A(x)
    baseline = task.operator.A_pinv(y)
    options = SamplerOptions(steps=args.steps, eta=args.eta)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    with torch.no_grad():
        x0 = sample(denoiser, linear_schedule(), task.operator, y, options, generator=generator)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    rows = []
    for i in range(x.shape[0]):
        truth = to_uint8(x[i])
        a, d = to_uint8(baseline[i]), to_uint8(x0[i])
        yi = y[i : i + 1]
        rows.append(
            {
                "psnr_pinv": psnr(a, truth),
                "psnr_ddnm": psnr(d, truth),
                "ssim_pinv": ssim(a, truth),
                "ssim_ddnm": ssim(d, truth),
                "consistency": float(
                    (task.operator.A(x0[i : i + 1]) - yi).norm() / yi.norm()
                ),
            }
        )
    sheet = [degraded_view(task.operator, x), baseline, x0, x]
    return {"rows": rows, "seconds": seconds, "sheet": sheet}


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


def report(results: dict[str, dict], args: argparse.Namespace, n: int) -> str:
    lines = [
        "# Held-out restoration quality",
        "",
        f"Model `{args.model}`, {n} held-out 32 x 32 crops ({', '.join(HELD_OUT)} from "
        f"skimage.data, downscaled {DOWNSCALE}x; never in the training set), DDNM with "
        f"{args.steps} steps, eta {args.eta}, sigma_y 0, seed {args.seed}. PSNR / SSIM on the "
        "8-bit images, mean over crops; consistency = ||A x0 - y|| / ||y|| of the DDNM result "
        "(before 8-bit rounding), max over crops.",
        "",
        "Regenerate: `python bench/quality.py "
        f"--model {args.model} --steps {args.steps} --crops {args.crops} --seed {args.seed}`",
        "",
        "| task | PSNR A⁺y | PSNR DDNM | SSIM A⁺y | SSIM DDNM | DDNM better (PSNR) | "
        "consistency (max) | DDNM time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        r = result["rows"]

        def mean(key: str, r: list[dict] = r) -> float:
            return statistics.fmean(row[key] for row in r)

        wins = sum(row["psnr_ddnm"] > row["psnr_pinv"] for row in r)
        lines.append(
            f"| {name} | {mean('psnr_pinv'):.2f} | {mean('psnr_ddnm'):.2f} | "
            f"{mean('ssim_pinv'):.3f} | {mean('ssim_ddnm'):.3f} | {wins} / {len(r)} | "
            f"{max(row['consistency'] for row in r):.1e} | {result['seconds']:.0f} s |"
        )
    lines += [
        "",
        "Contact sheet `quality_sheet.png`: per task (in the order above) "
        f"{SHEET_ROWS} crops, columns degraded | A⁺y | DDNM | truth.",
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
