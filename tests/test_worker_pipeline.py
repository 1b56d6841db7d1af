"""The job pipeline (`pipeline/`) without Redis or Celery: spec -> library operators, uploads ->
tensors, the final projection into [-1, 1], and whole runs with the small reference network."""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contract.settings import DEFAULT_MODEL, Settings
from contract.spec import TaskSpec
from ddnm import imaging, metrics, operators
from ddnm.models.registry import checkpoint_path, get_entry, sha256_file
from ddnm.results import into_box
from ddnm.sampling import SamplerOptions, StepInfo
from pipeline.job import read_upload, restore
from pipeline.models import ServedModel, load_model
from pipeline.tasks import chain_operator, sampler_options
from tests.conftest import FIXTURE_MODEL_ENV
from tests.test_service_api import MASK, box_downsample, crop, png
from worker.records import JobCanceled

torch.set_num_threads(1)


def spec(*degradations: dict, **settings: object) -> TaskSpec:
    """A spec with seed 3, noise-free (sigma_y 0) unless the settings say otherwise."""
    fields = {"degradations": list(degradations), "seed": 3, "sigma_y": 0.0, **settings}
    return TaskSpec.model_validate(fields)


def test_each_op_becomes_its_library_operator() -> None:
    mask = torch.from_numpy(MASK >= 128).float()
    shape = (3, 32, 32)
    cases = [
        ({"op": "downsample", "factor": 4, "filter": "bicubic"},
         operators.SuperResolution(4, filter="bicubic")),
        ({"op": "blur", "sigma": 1.5, "size": 7},
         operators.Deblur(operators.gaussian_kernel(1.5, 7), boundary="reflect")),
        ({"op": "blur", "sigma": 1.5, "size": 7, "boundary": "zero"},
         operators.Deblur(operators.gaussian_kernel(1.5, 7))),
        ({"op": "blur", "kernel": "uniform", "size": 5},
         operators.Deblur(operators.uniform_kernel(5), boundary="reflect")),
        ({"op": "blur", "kernel": "anisotropic", "sigma_rows": 3.0, "sigma_cols": 0.5},
         operators.Deblur(operators.anisotropic_gaussian_kernel(3.0, 0.5), boundary="reflect")),
        ({"op": "grayscale"}, operators.Colorization()),
    ]  # fmt: skip
    x = imaging.to_tensor(crop())
    for degradation, expected in cases:
        built = chain_operator(spec(degradation), shape, None)
        assert built == expected, degradation
        torch.testing.assert_close(built.A(x), expected.A(x))
    inpaint = chain_operator(spec({"op": "inpaint"}), shape, mask)
    assert isinstance(inpaint, operators.Inpainting) and torch.equal(inpaint.mask[0, 0], mask)
    assert isinstance(chain_operator(spec({"op": "denoise"}), shape, None), operators.Identity)
    cs = chain_operator(spec({"op": "cs", "ratio": 0.25}, evaluate=True), shape, None)
    expected_cs = operators.CompressedSensing(0.25, seed=3, image_size=(32, 32))
    assert torch.equal(cs.perm, expected_cs.perm) and cs.m == 256


def test_spec_settings_become_the_sampler_options() -> None:
    s = spec({"op": "denoise"}, steps=7, eta=0.5, sigma_y=0.1, travel={"length": 2, "repeat": 3})
    expected = SamplerOptions(
        steps=7, eta=0.5, sigma_y=0.1, travel_length=2, travel_repeat=3, clip_x0=True
    )
    assert sampler_options(s) == expected
    unclipped = s.model_copy(update={"clip_x0": False})
    assert sampler_options(unclipped) == dataclasses.replace(expected, clip_x0=False)


def test_old_photo_chain_is_exact() -> None:
    s = spec({"op": "inpaint"}, {"op": "grayscale"}, {"op": "downsample", "factor": 4})
    A = chain_operator(s, (3, 32, 32), torch.from_numpy(MASK >= 128).float())
    assert A.exact_pinv
    x = imaging.to_tensor(crop())
    y = A.A(x)
    assert y.shape == (1, 1, 8, 8)
    torch.testing.assert_close(A.A(A.A_pinv(y)), y, atol=1e-5, rtol=0)


def test_uploads_become_tensors() -> None:
    rgb = crop(8)
    torch.testing.assert_close(read_upload(png(rgb), 3), imaging.to_tensor(rgb))
    gray = rgb[..., 1]
    as_gray = read_upload(png(gray), 1)
    assert as_gray.shape == (1, 1, 8, 8)
    torch.testing.assert_close(as_gray[0, 0], torch.from_numpy(gray / 127.5 - 1).float())
    # a colour upload for a grayscale chain is converted, not refused: to what A makes of it
    torch.testing.assert_close(
        read_upload(png(rgb), 1), operators.Colorization().A(imaging.to_tensor(rgb))
    )


def observed(A: operators.LinearOperator, x: torch.Tensor) -> torch.Tensor:
    """A x rounded to 8 bits, as an uploaded observation."""
    return ((A.A(x).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def test_into_box_keeps_consistency_when_y_allows_it() -> None:
    A = operators.SuperResolution(4)
    x = imaging.to_tensor(crop())
    y = observed(A, x)
    # far out of range, as a random network's estimate can be
    x_hat = A.A_pinv(y) + 50 * (torch.randn(1, 3, 32, 32) - A.project(torch.randn(1, 3, 32, 32)))
    fitted = into_box(A, x_hat, y)
    assert fitted.abs().max() <= 1.0
    assert (A.A(fitted) - y).abs().max() <= 1e-4
    assert (A.A(x_hat.clamp(-1, 1)) - y).abs().max() > 0.1  # clipping alone breaks it


def test_into_box_gets_as_close_as_the_box_allows() -> None:
    """An 8-bit y of a blur has no exact preimage in the box; the result is at least as
    consistent as the true image (a point of the box)."""
    A = operators.Deblur(operators.gaussian_kernel(1.0))
    x = imaging.to_tensor(crop())
    y = observed(A, x)
    x_hat = A.A_pinv(y)  # exactly consistent, amplified rounding noise
    assert x_hat.abs().max() > 1.5
    fitted = into_box(A, x_hat, y)
    assert fitted.abs().max() <= 1.0
    assert (A.A(fitted) - y).norm() <= (A.A(x) - y).norm()
    assert (A.A(fitted) - y).norm() < 0.1 * (A.A(x_hat.clamp(-1, 1)) - y).norm()


@pytest.fixture(scope="module")
def model() -> ServedModel:
    os.environ.update(FIXTURE_MODEL_ENV)
    try:
        return load_model(Settings())
    finally:
        for key in FIXTURE_MODEL_ENV:
            del os.environ[key]


def test_fixture_model_is_served_with_its_identity(model: ServedModel) -> None:
    assert model.info.name == FIXTURE_MODEL_ENV["DDNM_MODEL"]
    assert model.info.image_size == 32 and not model.info.class_conditional
    assert model.info.checkpoint_sha256.startswith("2e9c11d1")


def test_restore_is_consistent_and_reproducible(model: ServedModel) -> None:
    y = box_downsample(crop(), 4).round().astype(np.uint8)
    s = spec({"op": "downsample", "factor": 4}, steps=4)
    seen: list[int] = []
    first = restore(model, s, png(y), None, callback=lambda info: seen.append(info.step))
    assert seen == [1, 2, 3, 4]
    assert first.consistency < 1e-4 and first.psnr is None
    result = np.asarray(Image.open(io.BytesIO(first.png)))
    assert result.shape == (32, 32, 3)
    assert np.abs(box_downsample(result, 4) - y).max() <= 0.5 + 0.02
    assert restore(model, s, png(y), None).png == first.png  # same seed, same result
    other = restore(model, s.model_copy(update={"seed": 4}), png(y), None)
    assert other.png != first.png


def test_samples_average_restorations(model: ServedModel) -> None:
    """samples = 3: three runs in one batch (progress counts their common steps), averaged;
    still consistent, and smoother than one draw (the mean of differing draws has less pixel
    variance)."""
    y = box_downsample(crop(), 4).round().astype(np.uint8)
    s = spec({"op": "downsample", "factor": 4}, steps=4, samples=3)
    seen: list[tuple[int, int]] = []
    mean = restore(model, s, png(y), None, callback=lambda i: seen.append((i.step, i.total)))
    assert seen == [(k, 4) for k in range(1, 5)]
    assert mean.consistency < 1e-4
    one = restore(model, s.model_copy(update={"samples": 1}), png(y), None)
    images = [np.asarray(Image.open(io.BytesIO(r.png)), np.float64) for r in (mean, one)]
    assert images[0].std() < images[1].std()


def test_evaluate_mode_reports_quality_against_the_upload(model: ServedModel) -> None:
    x = crop()
    s = spec({"op": "inpaint"}, steps=3, evaluate=True)
    result = restore(model, s, png(x), png(MASK))
    restored = np.asarray(Image.open(io.BytesIO(result.png)))
    assert result.psnr == pytest.approx(metrics.psnr(restored, x))
    assert result.ssim == pytest.approx(metrics.ssim(restored, x))
    known = MASK >= 128
    assert np.abs(restored[known].astype(int) - x[known]).max() <= 1  # known pixels kept


def test_a_raising_callback_stops_the_run(model: ServedModel) -> None:
    def cancel_at_2(info: StepInfo) -> None:
        if info.step == 2:
            raise JobCanceled("stop")

    s = spec({"op": "grayscale"}, steps=50)
    with pytest.raises(JobCanceled):
        restore(model, s, png(crop()[..., 0]), None, callback=cancel_at_2)


@pytest.mark.skipif(
    not checkpoint_path(DEFAULT_MODEL, None).is_file(), reason="default model weights not installed"
)
def test_the_default_model_is_served_from_the_registry(tmp_path: Path) -> None:
    served = load_model(Settings(model_dir=tmp_path))  # packaged: nothing to download
    entry = get_entry(DEFAULT_MODEL)
    assert served.info.name == DEFAULT_MODEL and served.info.image_size == entry.image_size
    assert served.info.checkpoint_sha256 == sha256_file(checkpoint_path(DEFAULT_MODEL, None))
    y = box_downsample(crop(), 4).round().astype(np.uint8)
    result = restore(served, spec({"op": "downsample", "factor": 4}, steps=4), png(y), None)
    assert result.consistency < 1e-4
