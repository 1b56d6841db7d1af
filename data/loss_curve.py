"""Draw a training loss curve (loss.csv written by `ddnm train`) as a PNG, with PIL only.

Plots the per-step loss (light) and its running mean over `--window` steps (dark) on a log scale.

    python data/loss_curve.py runs/ddnm-small-32/loss.csv ddnm/models/weights/ddnm-small-32-loss.png
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

W, H, MARGIN = 720, 420, 60


def read_losses(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return data[:, 0], data[:, 1]


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` values at every position (fewer at the start)."""
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(end - window, 0)
    return (cumulative[end] - cumulative[start]) / (end - start)


def draw(steps: np.ndarray, losses: np.ndarray, window: int, title: str) -> Image.Image:
    image = Image.new("RGB", (W, H), "white")
    pen = ImageDraw.Draw(image)
    lo, hi = math.floor(math.log10(losses.min())), math.ceil(math.log10(losses.max()))

    def xy(step: float, loss: float) -> tuple[float, float]:
        x = MARGIN + (W - 2 * MARGIN) * step / steps.max()
        y = H - MARGIN - (H - 2 * MARGIN) * (math.log10(loss) - lo) / (hi - lo)
        return x, y

    pen.rectangle([MARGIN, MARGIN, W - MARGIN, H - MARGIN], outline="black")
    for decade in range(lo, hi + 1):
        _, y = xy(0, 10.0**decade)
        pen.line([MARGIN, y, W - MARGIN, y], fill=(220, 220, 220))
        pen.text((8, y - 6), f"1e{decade}", fill="black")
    for k in range(5):
        step = steps.max() * k / 4
        x, _ = xy(step, 10.0**lo)
        pen.text((x - 12, H - MARGIN + 8), f"{step:.0f}", fill="black")
    pen.line([xy(s, v) for s, v in zip(steps, losses, strict=True)], fill=(170, 200, 240))
    smooth = running_mean(losses, window)
    pen.line([xy(s, v) for s, v in zip(steps, smooth, strict=True)], fill=(20, 60, 160), width=2)
    pen.text((MARGIN, 20), title, fill="black")
    pen.text((W // 2 - 20, H - 24), "step", fill="black")
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--window", type=int, default=100)
    args = parser.parse_args()
    steps, losses = read_losses(args.csv)
    title = (
        f"DDPM L_simple per step (light) and running mean over {args.window} steps (dark); "
        f"last mean {running_mean(losses, args.window)[-1]:.4f}"
    )
    draw(steps, losses, args.window, title).save(args.png)


if __name__ == "__main__":
    main()
