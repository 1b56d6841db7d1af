"""PSNR and SSIM against scikit-image's reference implementations on real images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ddnm.metrics import psnr, ssim


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    clean = skimage.data.astronaut()[100:164, 200:280]
    noise = np.random.default_rng(0).normal(0.0, 20.0, clean.shape)
    return clean, np.clip(clean + noise, 0, 255).astype(np.uint8)


def skimage_ssim(a: np.ndarray, b: np.ndarray, **kwargs: object) -> float:
    return float(
        structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, **kwargs
        )
    )


def test_psnr_matches_skimage(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-9)


def test_psnr_of_known_error() -> None:
    a = np.zeros((16, 16, 3), np.uint8)
    assert psnr(a, a + 1) == pytest.approx(20 * math.log10(255))
    assert psnr(a, a) == math.inf


def test_ssim_colour_matches_skimage(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    expected = skimage_ssim(a, b, channel_axis=2, data_range=255)
    assert ssim(a, b) == pytest.approx(expected, abs=1e-9)


def test_ssim_grey_float_matches_skimage(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = (v[..., 1].astype(np.float64) / 255 for v in pair)
    assert ssim(a, b, data_range=1.0) == pytest.approx(skimage_ssim(a, b, data_range=1.0), abs=1e-9)


def test_ssim_identical_is_one_and_symmetric(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, b) == pytest.approx(ssim(b, a))
    assert ssim(a, b) < 0.9


def test_shape_mismatch_is_refused(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, b[:-1])
    with pytest.raises(ValueError, match="11 x 11"):
        ssim(a[:8, :8], b[:8, :8])
