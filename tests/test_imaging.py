"""Conversions between image files, uint8 arrays and [-1, 1] tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from ddnm.imaging import load_image, load_mask, mask_to_tensor, save_image, to_tensor, to_uint8


def test_value_range_endpoints() -> None:
    u = np.array([[[0, 255, 128]]], np.uint8)
    x = to_tensor(u)
    assert x.shape == (1, 3, 1, 1) and x.dtype == torch.float32
    assert x.flatten().tolist() == pytest.approx([-1.0, 1.0, 128 / 127.5 - 1.0], abs=1e-7)


def test_round_trip_is_exact_on_a_real_image() -> None:
    image = skimage.data.astronaut()[330:362, 300:332]
    x = to_tensor(image)
    assert x.shape == (1, 3, 32, 32)
    assert torch.equal(x[0, :, 5, 7], torch.from_numpy(image[5, 7]).float() / 127.5 - 1)
    np.testing.assert_array_equal(to_uint8(x), image)
    np.testing.assert_array_equal(to_uint8(x[0]), image)


def test_to_uint8_clips_and_rounds() -> None:
    x = torch.tensor([-3.0, 3.0, 0.0, 1 / 255]).view(1, 3 + 1, 1, 1)[:, :3]
    assert to_uint8(x).flatten().tolist() == [0, 255, 128]


def test_file_round_trip_and_modes(tmp_path: Path) -> None:
    image = skimage.data.chelsea()[:40, :50]
    save_image(to_tensor(image), tmp_path / "c.png")
    np.testing.assert_array_equal(load_image(tmp_path / "c.png"), image)
    Image.fromarray(image[..., 0]).save(tmp_path / "grey.png")
    grey = load_image(tmp_path / "grey.png")
    assert grey.shape == (40, 50, 3) and (grey == image[..., :1]).all()
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2, :, :] = (10, 20, 30, 255)  # top half opaque, bottom half transparent
    Image.fromarray(rgba).save(tmp_path / "a.png")
    composited = load_image(tmp_path / "a.png")
    assert composited[0, 0].tolist() == [10, 20, 30] and composited[3, 0].tolist() == [255] * 3


def test_mask_threshold(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 127], [128, 255]], np.uint8)).save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png")
    assert mask.tolist() == [[False, False], [True, True]]
    assert mask_to_tensor(mask).tolist() == [[0.0, 0.0], [1.0, 1.0]]


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)])
def test_to_tensor_refuses_bad_arrays(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(bad)


def test_to_uint8_refuses_batches() -> None:
    with pytest.raises(ValueError, match="batch size"):
        to_uint8(torch.zeros(2, 3, 4, 4))
