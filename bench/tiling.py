"""Images larger than the model: Mask-Shift, fused windows, naive tiles and the whole canvas.

For held-out photographs (4x box SR to 128 x 128 from 32 x 32, through the job pipeline, default
model) it reports, per method: PSNR against the truth, the consistency ||A x - y|| / ||y||, wall
time, and a seam statistic: the mean absolute step between neighbouring columns (and rows) of
the image, the largest over all column (row) borders divided by their median; for the truth the
same figure says how much an edge of the picture itself stands out. A seam at window borders
shows as a ratio far above the truth's.

Then, side by side in one run: Mask-Shift in waves against the same windows one by one (a 4 x 4
grid, 80 x 80), which give the same image; and the peak memory (max RSS of a fresh process) of
512 x 512 restores.

    .venv/bin/python bench/tiling.py [--steps 50] [--out bench]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

from contract.spec import TaskSpec
from contract.tiling import plan_tiles
from ddnm.imaging import to_tensor
from ddnm.metrics import psnr
from ddnm.operators import SuperResolution
from ddnm.sampling import SamplerOptions, finish
from ddnm.tiling import OneByOne, mask_shift_run
from pipeline.job import restore
from pipeline.models import load_named

PHOTOS = ("astronaut", "coffee", "chelsea")  # held out from the default model's training
METHODS = {  # name: spec fields
    "fused": {"tiling": "fused"},
    "Mask-Shift": {"tiling": "mask_shift"},
    "naive tiles (no overlap)": {"tiling": "mask_shift", "overlap": 0},
    "whole canvas": {"tiling": "whole"},
}


def photo(name: str, side: int) -> np.ndarray:
    image = Image.fromarray(getattr(skimage.data, name)())
    short = min(image.size)
    return np.asarray(image.crop((0, 0, short, short)).resize((side, side), Image.LANCZOS))


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def seam_ratio(image: np.ndarray) -> float:
    """max / median of the mean |step| across each column and row border (both axes)."""
    x = image.astype(np.float64)
    ratios = []
    for axis in (0, 1):
        steps = np.abs(np.diff(x, axis=axis)).mean(axis=tuple(a for a in (0, 1, 2) if a != axis))
        ratios.append(steps.max() / np.median(steps))
    return float(max(ratios))


@dataclass
class Row:
    psnr: list[float]
    seam: list[float]
    consistency: list[float]
    seconds: list[float]


def quality(steps: int) -> tuple[dict[str, Row], list[float]]:
    model = load_named("ddnm-small-32", None)
    rows = {name: Row([], [], [], []) for name in METHODS}
    truth_seams = []
    for name in PHOTOS:
        x = photo(name, 128)
        truth_seams.append(seam_ratio(x))
        y = np.asarray(Image.fromarray(x).reduce(4))
        for method, fields in METHODS.items():
            spec = TaskSpec.model_validate(
                {"degradations": [{"op": "downsample", "factor": 4}], "steps": steps, "seed": 0}
                | fields
            )
            start = time.perf_counter()
            result = restore(model, spec, png(y), None)
            rows[method].seconds.append(time.perf_counter() - start)
            rows[method].psnr.append(psnr(result.image, x))
            rows[method].seam.append(seam_ratio(result.image))
            rows[method].consistency.append(result.consistency)
    return rows, truth_seams


def orders(steps: int) -> dict[str, float]:
    """Seconds for a 4 x 4 grid (80 x 80, 4x SR) in waves and one by one, and their largest
    pixel difference."""
    model = load_named("ddnm-small-32", None)
    op = SuperResolution(4)
    y = op.A(to_tensor(photo("astronaut", 80)))
    plan = plan_tiles(80, 80, 32, 16, align=4)
    out, seconds = {}, {}
    for name, layout in (("waves", plan), ("one by one", OneByOne(plan))):
        start = time.perf_counter()
        the_run = mask_shift_run(
            model.schedule, op, y, SamplerOptions(steps=steps, clip_x0=True), layout, 4,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        out[name] = finish(the_run, model.eps)
        seconds[name] = time.perf_counter() - start
    seconds["max |difference|"] = float((out["waves"] - out["one by one"]).abs().max())
    return seconds


PEAK = """
import io, resource, sys
import numpy as np
from PIL import Image
from contract.spec import TaskSpec
from pipeline.job import restore
from pipeline.models import load_named
model = load_named("ddnm-small-32", None)
side, tiling = int(sys.argv[1]), sys.argv[2]
y = np.zeros((side // 4, side // 4, 3), np.uint8)
out = io.BytesIO(); Image.fromarray(y).save(out, format="PNG")
spec = TaskSpec.model_validate({"degradations": [{"op": "downsample", "factor": 4}],
                                "steps": 2, "seed": 0, "tiling": tiling})
restore(model, spec, out.getvalue(), None)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_mib(side: int, tiling: str) -> float:
    """Max RSS (MiB) of a fresh process restoring a side x side output (4x SR, 2 steps)."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK, str(side), tiling], check=True, capture_output=True, text=True
    ).stdout
    return int(out.split()[-1]) / 1024


def report(steps: int) -> str:
    rows, truth = quality(steps)
    lines = [
        f"Default model, {steps} steps, 4x box SR of {', '.join(PHOTOS)} (held out) to 128 x 128 "
        f"(7 x 7 windows of 32, overlap 16), {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; means over the photos.",
        "",
        "| method | PSNR (dB) | seam ratio (truth "
        f"{np.mean(truth):.2f}) | consistency (max) | time (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {np.mean(row.psnr):.2f} | {np.mean(row.seam):.2f} | "
            f"{max(row.consistency):.1e} | {np.mean(row.seconds):.1f} |"
        )
    timing = orders(steps)
    lines += [
        "",
        f"Mask-Shift on a 4 x 4 grid (80 x 80), {steps} steps: in waves {timing['waves']:.1f} s, "
        f"one by one {timing['one by one']:.1f} s (ratio "
        f"{timing['one by one'] / timing['waves']:.2f}); largest pixel difference "
        f"{timing['max |difference|']:.1e} (the rounding of batched forwards).",
        "",
        "Peak memory (max RSS of a fresh process, 4x SR, 2 steps): "
        + ", ".join(
            f"{side} x {side} {tiling} {peak_mib(side, tiling):.0f} MiB"
            for side, tiling in ((32, "fused"), (512, "fused"), (512, "mask_shift"))
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    text = report(args.steps)
    (args.out / "tiling.md").write_text("# Tiling\n\n" + text)
    print(text)


if __name__ == "__main__":
    main()
