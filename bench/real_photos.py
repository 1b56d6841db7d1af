"""Real photographs, degraded as cameras and prints degrade them, against classical methods.

Held-out photos (astronaut, coffee, chelsea from skimage.data, 4x reduced, 64 x 96 centre crops;
the old print 32 x 64), each task's observation made outside the project's operators (the
degradations of tests/test_real_photos.py), restored through the job pipeline with the default
model, with the service's defaults and with the presets:

    4x upscaling     a box (camera) reduction, PNG          bicubic, Lanczos
    deblurring       scipy's Gaussian (sigma 1.5), JPEG 95  the blurred photo, the best of Wiener
                                                            (3 regularisations) and
                                                            Richardson-Lucy, given the kernel
    colorization     the grey photo                         the grey photo
    inpainting       40 % of the pixels lost                the best of biharmonic (scikit-image)
                                                            and OpenCV's Telea / Navier-Stokes
    old print        2x reduced, grey, scratched            the same inpainting, then bicubic

PSNR and SSIM on 8-bit images, means over the photos. No LPIPS: the packages that compute it
download their network weights, which this offline machine cannot. Writes real_photos.md and
real_photos_sheet.png (per task, the first photo: observation | classical | DDNM | truth).

    PYTHONPATH=. .venv/bin/python bench/real_photos.py [--out bench]
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from contract.spec import TaskSpec
from ddnm.metrics import psnr, ssim
from pipeline.job import restore
from pipeline.models import ServedModel, load_named
from tests.test_real_photos import (
    SIGMA,
    best_classical_image,
    camera_blur,
    classical_inpaint,
    held_out,
    png,
    scratched_print,
)

PHOTOS = ("astronaut", "coffee", "chelsea")
Observation = tuple[bytes, bytes | None, np.ndarray]  # upload, mask, the observation as shown


def rgb(image: np.ndarray) -> np.ndarray:
    return np.stack([image] * 3, -1) if image.ndim == 2 else image


def upscale(x: np.ndarray) -> tuple[Observation, dict[str, np.ndarray]]:
    low = np.asarray(Image.fromarray(x).reduce(4))
    size = (x.shape[1], x.shape[0])
    classical = {
        name: np.asarray(Image.fromarray(low).resize(size, f))
        for name, f in (("bicubic", Image.BICUBIC), ("Lanczos", Image.LANCZOS))
    }
    return (png(low), None, low), classical


def deblur(x: np.ndarray) -> tuple[Observation, dict[str, np.ndarray]]:
    upload = camera_blur(x)
    observed = np.asarray(Image.open(io.BytesIO(upload)))
    classical = {
        "blurred photo": observed,
        "best of Wiener / RL": best_classical_image(observed, x),
    }
    return (upload, None, observed), classical


def colorize(x: np.ndarray) -> tuple[Observation, dict[str, np.ndarray]]:
    grey = x.astype(float).mean(-1).round().astype(np.uint8)
    return (png(grey), None, grey), {"grey photo": rgb(grey)}


def lost_pixels(x: np.ndarray) -> tuple[Observation, dict[str, np.ndarray]]:
    mask = np.where(np.random.default_rng(0).random(x.shape[:2]) > 0.4, 255, 0).astype(np.uint8)
    holed = np.where(mask[..., None] > 0, x, 0).astype(np.uint8)
    classical = {"best of biharmonic / OpenCV": classical_inpaint(holed, mask, x)}
    return (png(holed), png(mask), holed), classical


def old_print(x: np.ndarray) -> tuple[Observation, dict[str, np.ndarray]]:
    damaged, mask = scratched_print(x, seed=0)
    classical = {"best inpainting + bicubic": classical_inpaint(damaged, mask, x)}
    return (png(damaged), png(mask), damaged), classical


# task: (crop size, degradation, DDNM settings by name)
TASKS: dict[str, tuple[tuple[int, int], Callable, dict[str, dict]]] = {
    "4x upscaling": ((64, 96), upscale, {"DDNM, defaults": {"preset": "upscale_4x"}}),
    "deblurring (sigma 1.5, JPEG)": (
        (64, 96),
        deblur,
        {"DDNM, defaults": {"degradations": [{"op": "blur", "sigma": SIGMA}]}},
    ),
    "colorization": (
        (64, 96),
        colorize,
        {
            "DDNM, defaults": {"degradations": [{"op": "grayscale"}]},
            "DDNM, preset colorize": {"preset": "colorize"},
        },
    ),
    "inpainting (40 % lost)": ((64, 96), lost_pixels, {"DDNM, defaults": {"preset": "inpaint"}}),
    "old print (2x, grey, scratched)": (
        (32, 64),
        old_print,
        {"DDNM, preset old_photo": {"preset": "old_photo"}},
    ),
}


def run_task(model: ServedModel, task: str) -> tuple[dict[str, list], list[np.ndarray]]:
    """Per method: [(PSNR, SSIM)] over the photos; and the sheet row of the first photo."""
    size, degrade, settings = TASKS[task]
    scores: dict[str, list] = {}
    row: list[np.ndarray] = []
    for k, name in enumerate(PHOTOS):
        x = held_out(name, *size)
        (upload, mask, shown), classical = degrade(x)
        results = dict(classical)
        for method, fields in settings.items():
            spec = TaskSpec.model_validate({**fields, "seed": 0})
            results[method] = restore(model, spec, upload, mask).image
        for method, image in results.items():
            scores.setdefault(method, []).append((psnr(image, x), ssim(image, x)))
        if k == 0:
            row = [rgb(np.asarray(Image.fromarray(shown).resize((size[1], size[0]))))]
            row += [*results.values(), x]
    return scores, row


def sheet(rows: list[list[np.ndarray]], zoom: int = 2) -> Image.Image:
    """Rows of images side by side (padded to the widest row), magnified `zoom` times."""

    def framed(image: np.ndarray) -> np.ndarray:
        return np.pad(image, ((0, 64 - image.shape[0]), (0, 2), (0, 0)), constant_values=255)

    strips = [np.concatenate([framed(image) for image in row], 1) for row in rows]
    width = max(s.shape[1] for s in strips)
    canvas = np.concatenate(
        [np.pad(s, ((0, 4), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips]
    )
    return Image.fromarray(canvas).resize((canvas.shape[1] * zoom, canvas.shape[0] * zoom), 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    model = load_named("ddnm-small-32", None)
    lines = [
        "# Real photographs",
        "",
        "Default model, 100 steps, seed 0; means over astronaut, coffee, chelsea (held out). "
        "Regenerate: `PYTHONPATH=. .venv/bin/python bench/real_photos.py`; its docstring says "
        "how each photo was degraded.",
        "",
        "| task | method | PSNR (dB) | SSIM |",
        "|---|---|---:|---:|",
    ]
    rows = []
    for task in TASKS:
        scores, row = run_task(model, task)
        rows.append(row)
        for method, values in scores.items():
            p, s = np.mean(values, axis=0)
            lines.append(f"| {task} | {method} | {p:.2f} | {s:.3f} |")
        print(lines[-len(scores) :], flush=True)
    lines += [
        "",
        "Sheet `real_photos_sheet.png`: per task (in the order above) the first photo, columns "
        "observation | classical method(s) | DDNM result(s) | truth.",
    ]
    (args.out / "real_photos.md").write_text("\n".join(lines) + "\n")
    sheet(rows).save(args.out / "real_photos_sheet.png")


if __name__ == "__main__":
    main()
