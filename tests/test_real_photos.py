"""Real photographs degraded the way cameras degrade them, not by the project's own operators,
restored with the service's defaults (the job pipeline, the shipped model)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage import data, restoration

from contract.spec import TaskSpec
from ddnm.metrics import psnr
from pipeline.job import restore
from pipeline.models import ServedModel, load_named

pytestmark = pytest.mark.slow
SIGMA = 1.5  # the blur's std in pixels, known to the client


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return load_named("ddnm-small-32", None)


def held_out(name: str, height: int = 64, width: int = 96) -> np.ndarray:
    """A centre crop of a held-out photo, 4x reduced so that it shows objects."""
    image = np.asarray(Image.fromarray(getattr(data, name)()).reduce(4))
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return image[top : top + height, left : left + width]


def camera_blur(x: np.ndarray) -> bytes:
    """x blurred by scipy's Gaussian (mirrored border, 4-sigma kernel) and saved as a JPEG."""
    channels = [ndimage.gaussian_filter(x[..., c].astype(float), SIGMA) for c in range(3)]
    blurred = np.clip(np.stack(channels, -1).round(), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(blurred).save(out, format="JPEG", quality=95)
    return out.getvalue()


def best_classical_image(observed: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The best (by PSNR) of Wiener (three regularisations) and Richardson-Lucy deconvolution,
    given the true kernel: the strongest classical baseline, chosen with the truth."""
    t = np.arange(-6, 7)
    g = np.exp(-(t**2) / (2 * SIGMA**2))
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    y = observed.astype(float) / 255
    candidates = [
        lambda c, b=balance: restoration.wiener(y[..., c], kernel, balance=b)
        for balance in (0.003, 0.01, 0.03)
    ] + [lambda c: restoration.richardson_lucy(y[..., c], kernel, num_iter=30)]
    images = []
    for deconvolve in candidates:
        estimate = np.stack([deconvolve(c) for c in range(3)], -1)
        images.append((np.clip(estimate, 0, 1) * 255).round().astype(np.uint8))
    return max(images, key=lambda image: psnr(image, truth))


def border_and_interior(image: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """PSNR of the outer 4-pixel frame and of the rest."""
    frame = np.zeros(truth.shape[:2], bool)
    frame[:4], frame[-4:], frame[:, :4], frame[:, -4:] = True, True, True, True
    return psnr(image[frame], truth[frame]), psnr(image[~frame], truth[~frame])


@pytest.mark.parametrize("name", ["coffee"])  # the other photos: bench/real_photos.md
def test_a_camera_blurred_jpeg_is_deblurred_with_the_defaults(model: ServedModel, name: str):
    """Defaults only (reflect boundary, sigma_y for a blur, 100 steps): sharper than the
    blurred photo and than the best classical deconvolution, and no ringing band at the border
    (the frame within 1 dB of the interior)."""
    x = held_out(name)
    upload = camera_blur(x)
    spec = TaskSpec.model_validate({"degradations": [{"op": "blur", "sigma": SIGMA}], "seed": 0})
    result = restore(model, spec, upload, None)
    observed = np.asarray(Image.open(io.BytesIO(upload)))
    restored = psnr(result.image, x)
    assert restored > psnr(observed, x) + 1.0
    assert restored > psnr(best_classical_image(observed, x), x)
    border, interior = border_and_interior(result.image, x)
    assert border > interior - 1.0, (border, interior)


def scratched_print(x: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The small grey print of x (2x reduced) with scratches drawn on it in black and white,
    as received, and the mask of the damage (0 = scratched) at the print's size."""
    grey = np.asarray(Image.fromarray(x).reduce(2)).astype(float).mean(-1).round()
    print_ = Image.fromarray(grey.astype(np.uint8))
    mask = Image.new("L", print_.size, 255)
    rng = np.random.default_rng(seed)
    for k in range(6):
        line = [tuple(int(v) for v in rng.integers(0, print_.size)) for _ in range(2)]
        ImageDraw.Draw(print_).line(line, fill=255 * (k % 2), width=1)
        ImageDraw.Draw(mask).line(line, fill=0, width=1)
    return np.asarray(print_), np.asarray(mask)


def classical_inpaint(image: np.ndarray, mask: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The best (by PSNR against `truth`, upscaled bicubically to its size) of biharmonic
    inpainting (scikit-image) and OpenCV's Telea and Navier-Stokes inpainting of `image` (H, W)
    or (H, W, 3) uint8 where `mask` is dark; returned upscaled."""
    lost = mask < 128
    channels = {"channel_axis": -1} if image.ndim == 3 else {}
    candidates = [
        (restoration.inpaint_biharmonic(image / 255, lost, **channels) * 255).round(),
        *(
            cv2.inpaint(image, lost.astype(np.uint8), 3, flag)
            for flag in (cv2.INPAINT_TELEA, cv2.INPAINT_NS)
        ),
    ]
    size = (truth.shape[1], truth.shape[0])
    upscaled = [
        np.asarray(Image.fromarray(np.clip(c, 0, 255).astype(np.uint8)).resize(size, Image.BICUBIC))
        for c in candidates
    ]
    as_rgb = [u if u.ndim == 3 else np.stack([u] * 3, -1) for u in upscaled]
    return max(as_rgb, key=lambda u: psnr(u, truth))


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("name", ["coffee", "chelsea"])  # astronaut too: bench/real_photos.md
def test_a_scratched_old_print_is_restored_with_the_old_photo_preset(
    model: ServedModel, name: str
) -> None:
    """The preset alone (2x, grey, the damage mask at the print's size; 32 x 32 photos, 16 x 16
    prints; the 32 x 64 ones of bench/real_photos.md are tiled): closer to the colour photo in
    PSNR than the classical route, the best of biharmonic and OpenCV (Telea, Navier-Stokes)
    inpainting, then bicubic upscaling."""
    x = held_out(name, 32, 32)
    damaged, mask = scratched_print(x, seed=0)
    result = restore(model, TaskSpec.model_validate({"preset": "old_photo", "seed": 0}),
                     png(damaged), png(mask))  # fmt: skip
    assert result.image.shape == x.shape
    assert psnr(result.image, x) > psnr(classical_inpaint(damaged, mask, x), x)


def test_the_values_under_a_damage_mask_are_ignored(model: ServedModel) -> None:
    """Black or white scratches, or their inverse: the same restoration (y = A A⁺ y keeps only
    the pixels the mask calls known)."""
    damaged, mask = scratched_print(held_out("coffee", 32, 64), seed=1)
    inverted = np.where(mask < 128, 255 - damaged, damaged)
    fields = {"steps": 3, "samples": 1, "travel": {"length": 1, "repeat": 1}}  # quick: any run
    spec = TaskSpec.model_validate({"preset": "old_photo", "seed": 0, **fields})
    first, second = (restore(model, spec, png(d), png(mask)) for d in (damaged, inverted))
    assert first.png == second.png
