"""The `ddnm restore` and `ddnm train` commands, run in-process on real images and real files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from safetensors.torch import save_file

from cli.main import main
from cli.restore import parse_op, parse_travel
from ddnm.imaging import load_image
from ddnm.models import load_network
from tests.test_training import TINY


@pytest.fixture(scope="module")
def small_model(reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference's small guided UNet as a .safetensors file with its config in the header."""
    config = json.loads((reference_dir / "models" / "guided_small_config.json").read_text())
    state = torch.load(reference_dir / "models" / "guided_small_state_dict.pt", weights_only=True)
    path = tmp_path_factory.mktemp("model") / "guided_small.safetensors"
    metadata = {"arch": "adm", "config": json.dumps(config["create_model_kwargs"])}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32 x 32 crop of a real photograph."""
    path = tmp_path_factory.mktemp("images") / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()[330:362, 300:332]).save(path)
    return path


def test_parse_op() -> None:
    assert parse_op("downsample:4") == {"op": "downsample", "factor": 4, "filter": "box"}
    assert parse_op("downsample:2:bicubic")["filter"] == "bicubic"
    assert parse_op("grayscale") == {"op": "grayscale"}
    for bad in ("upsample:4", "downsample", "downsample:x", "grayscale:2"):
        with pytest.raises(ValueError, match="--op"):
            parse_op(bad)


def test_parse_travel() -> None:
    assert parse_travel("10:3") == {"length": 10, "repeat": 3}
    for bad in ("10", "10:x", "1:2:3", "-1:2"):
        with pytest.raises(ValueError, match="--travel"):
            parse_travel(bad)


def test_restore_simulated_super_resolution(
    small_model: Path, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    argv = ["restore", str(photo), "--op", "downsample:4", "--simulate", "--steps", "5"]
    assert main([*argv, "--model", str(small_model), "-o", str(out), "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed_consistency(printed) < 1e-4
    assert re.search(r"PSNR [0-9.]+ dB, SSIM [0-9.]+", printed)
    assert load_image(out).shape == load_image(photo).shape


def test_restore_observation_and_evaluate(
    small_model: Path, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    low = tmp_path / "low.png"
    Image.fromarray(load_image(photo)).reduce(4).save(low)
    out = tmp_path / "out.png"
    argv = ["restore", str(low), "--op", "downsample:4", "--steps", "3", "--eta", "0"]
    assert main([*argv, "--model", str(small_model), "-o", str(out), "--evaluate", str(photo)]) == 0
    assert load_image(out).shape == (32, 32, 3)
    assert "SSIM" in capsys.readouterr().out


def printed_consistency(printed: str) -> float:
    return float(re.search(r"\|\| = ([0-9.e+-]+)", printed).group(1))  # type: ignore[union-attr]


@pytest.mark.parametrize("op", ["grayscale", "denoise", "blur:1"])
def test_restore_other_ops(
    op: str, small_model: Path, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    argv = ["restore", str(photo), "--op", op, "--simulate", "--steps", "3"]
    assert main([*argv, "--model", str(small_model), "-o", str(out)]) == 0
    assert printed_consistency(capsys.readouterr().out) < 1e-4
    assert load_image(out).shape == (32, 32, 3)


def test_restore_samples_and_clipping(
    small_model: Path, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--samples 3 averages three draws (a different, still consistent image); --no-clip-x0
    runs the paper's unclipped sampler, --travel 1:2 time travel (different images again)."""
    argv = ["restore", str(photo), "--op", "grayscale", "--simulate", "--steps", "3"]
    argv += ["--model", str(small_model)]
    results = {}
    variants = {
        "one": [],
        "mean": ["--samples", "3"],
        "raw": ["--no-clip-x0"],
        "travel": ["--travel", "1:2"],
    }
    for name, extra in variants.items():
        assert main([*argv, *extra, "-o", str(tmp_path / f"{name}.png")]) == 0
        assert printed_consistency(capsys.readouterr().out) < 1e-4
        results[name] = load_image(tmp_path / f"{name}.png")
    for name in ("mean", "raw", "travel"):
        assert not np.array_equal(results["one"], results[name])


def test_restore_sampler_defaults_are_the_task_specs(
    small_model: Path, photo: Path, tmp_path: Path
) -> None:
    """Without sampler flags the command runs the task spec's defaults: spelling them out gives
    the same image."""
    from contract.spec import TaskSpec

    d = TaskSpec.model_fields
    spelled = ["--eta", str(d["eta"].default), "--sigma-y", str(d["sigma_y"].default)]
    spelled += ["--samples", str(d["samples"].default)]
    spelled += ["--clip-x0" if d["clip_x0"].default else "--no-clip-x0"]
    travel = d["travel"].default
    spelled += ["--travel", f"{travel.length}:{travel.repeat}"]
    argv = ["restore", str(photo), "--op", "grayscale", "--simulate", "--steps", "3"]
    argv += ["--model", str(small_model)]
    assert main([*argv, "-o", str(tmp_path / "bare.png")]) == 0
    assert main([*argv, *spelled, "-o", str(tmp_path / "spelled.png")]) == 0
    assert np.array_equal(load_image(tmp_path / "bare.png"), load_image(tmp_path / "spelled.png"))


def write_mask(path: Path, hole: tuple[slice, slice]) -> None:
    """A 32x32 mask PNG: white (known) except the black `hole`."""
    mask = np.full((32, 32), 255, np.uint8)
    mask[hole] = 0
    Image.fromarray(mask).save(path)


def test_restore_inpainting_with_a_mask(
    small_model: Path, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_mask(tmp_path / "mask.png", np.s_[8:20, 10:24])
    out = tmp_path / "out.png"
    argv = ["restore", str(photo), "--op", "inpaint", "--mask", str(tmp_path / "mask.png")]
    argv += ["--simulate", "--steps", "3", "--model", str(small_model), "-o", str(out)]
    assert main(argv) == 0
    assert printed_consistency(capsys.readouterr().out) < 1e-4


def test_restore_errors(small_model: Path, photo: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "out.png")
    model = ["--model", str(small_model), "-o", out]
    assert main(["restore", str(photo), "--op", "inpaint", *model]) == 2  # no --mask
    assert main(["restore", str(photo), "--op", "downsample:3", "--simulate", *model]) == 2
    assert main(["restore", str(photo), "--op", "denoise", "--steps", "0", *model]) == 2
    assert main(["restore", str(photo), "--op", "denoise", "--samples", "0", *model]) == 2
    assert main(["restore", str(photo), "--op", "denoise", "--travel", "3", *model]) == 2
    assert not Path(out).exists()


def _train_data(tmp_path: Path) -> Path:
    data = tmp_path / "images"
    data.mkdir()
    Image.fromarray(skimage.data.rocket()).resize((48, 32)).save(data / "rocket.png")
    Image.fromarray(skimage.data.coffee()).resize((48, 32)).save(data / "coffee.jpg")
    return data


def _train_args(data: Path, out: Path) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--config", json.dumps(TINY)]


@pytest.mark.slow
def test_train_then_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = [*_train_args(_train_data(tmp_path), tmp_path / "run"), "--batch-size", "2"]
    common += ["--seed", "5"]
    assert main([*common, "--steps", "2"]) == 0
    assert main([*common, "--steps", "3", "--resume"]) == 0
    assert "2 images" in capsys.readouterr().out
    rows = (tmp_path / "run" / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss" and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    network = load_network(tmp_path / "run" / "ema.safetensors", arch="adm", config=TINY)
    assert sum(p.numel() for p in network.parameters()) > 0


@pytest.mark.slow
def test_train_from_given_weights(tmp_path: Path) -> None:
    """--init fine-tunes: the network starts from the given weights (a run with a vanishing
    learning rate ends where it started), which a fresh run does not."""
    data = _train_data(tmp_path)
    assert main([*_train_args(data, tmp_path / "base"), "--steps", "1", "--seed", "0"]) == 0
    base = tmp_path / "base" / "ema.safetensors"
    tuned_args = [*_train_args(data, tmp_path / "tuned"), "--steps", "2", "--lr", "1e-12"]
    assert main([*tuned_args, "--init", str(base), "--seed", "1"]) == 0
    fresh_args = [*_train_args(data, tmp_path / "fresh"), "--steps", "2", "--lr", "1e-12"]
    assert main([*fresh_args, "--seed", "1"]) == 0

    def weights(run: str) -> dict[str, torch.Tensor]:
        path = tmp_path / run / "ema.safetensors"
        return load_network(path, arch="adm", config=TINY).state_dict()

    start, tuned, fresh = weights("base"), weights("tuned"), weights("fresh")
    for key, value in start.items():
        torch.testing.assert_close(tuned[key], value, rtol=0, atol=1e-6)
    assert any(not torch.allclose(fresh[k], v) for k, v in start.items())


def test_restore_a_chain(
    small_model: Path, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Old-photo chain: holes, then grey, then 2x box downsampling; --op order is the chain's."""
    write_mask(tmp_path / "mask.png", np.s_[4:12, 6:20])
    out = tmp_path / "out.png"
    argv = ["restore", str(photo), "--mask", str(tmp_path / "mask.png"), "--simulate"]
    argv += ["--op", "inpaint", "--op", "grayscale", "--op", "downsample:2"]
    assert main([*argv, "--steps", "3", "--model", str(small_model), "-o", str(out)]) == 0
    assert printed_consistency(capsys.readouterr().out) < 1e-3


@pytest.mark.slow
def test_restore_with_the_shipped_default_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --model: the packaged ddnm-small-32 restores held-out crops (never seen in training)
    from 4x box downsampling better than A⁺y (nearest upsampling) does, and its saved result keeps
    the observed block means."""
    from ddnm.metrics import psnr

    wins = 0
    for k, (top, left) in enumerate([(330, 300), (100, 200), (200, 380)]):
        truth = skimage.data.astronaut()[top : top + 32, left : left + 32]
        low = truth.astype(np.float64).reshape(8, 4, 8, 4, 3).mean(axis=(1, 3))
        Image.fromarray(low.round().astype(np.uint8)).save(tmp_path / f"low{k}.png")
        out = tmp_path / f"out{k}.png"
        argv = ["restore", str(tmp_path / f"low{k}.png"), "--op", "downsample:4", "--steps", "20"]
        argv += ["--sigma-y", "0"]  # noise-free DDNM: the observed block means are kept
        assert main([*argv, "-o", str(out), "--seed", "0"]) == 0
        restored = load_image(out)
        block_means = restored.astype(np.float64).reshape(8, 4, 8, 4, 3).mean(axis=(1, 3))
        assert np.abs(block_means - low.round()).max() <= 2.0
        nearest = np.repeat(np.repeat(low.round().astype(np.uint8), 4, 0), 4, 1)
        wins += psnr(restored, truth) > psnr(nearest, truth)
    assert printed_consistency(capsys.readouterr().out) < 1e-4
    assert wins >= 2
