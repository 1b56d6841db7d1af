"""Checkpoint loading: safe unpickling, safetensors, key checks, conversion, registry names."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
from safetensors import safe_open

from cli.main import main
from ddnm.models import convert_checkpoint, load_network, read_state_dict
from tests.conftest import fixture_files


class WouldTouch:
    """Unpickling this object calls pathlib.Path.touch(marker): code execution from a file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def guided():
    return fixture_files("guided_small")


def _forward(net, io):
    with torch.no_grad():
        return net(torch.from_numpy(io["x"]), torch.from_numpy(io["t"])).numpy()


@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_a_pickle_that_would_execute_code_is_refused(tmp_path, suffix):
    marker = tmp_path / "executed"
    crafted = tmp_path / f"evil{suffix}"
    torch.save({"weight": torch.zeros(2), "payload": WouldTouch(marker)}, crafted)
    with pytest.raises(ValueError, match="refused"):
        read_state_dict(crafted)
    with pytest.raises(ValueError, match="refused"):
        load_network(
            crafted,
            arch="adm",
            config={"image_size": 8, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1"},
        )
    assert not marker.exists()
    torch.load(crafted, weights_only=False)  # the file really is malicious: a full unpickle runs it
    assert marker.exists()


def test_safetensors_conversion_round_trip_with_header(guided, tmp_path):
    path, config, io = guided
    dst = tmp_path / "guided.safetensors"
    assert convert_checkpoint(path, dst, "adm", config["create_model_kwargs"]) == 306
    with safe_open(str(dst), framework="pt") as f:
        header = f.metadata()
    assert header["arch"] == "adm"
    assert json.loads(header["config"]) == config["create_model_kwargs"]
    stored, converted = torch.load(path, weights_only=True), read_state_dict(dst)
    assert list(converted) == list(stored) or sorted(converted) == sorted(stored)
    assert all(torch.equal(stored[k], converted[k]) for k in stored)
    net = load_network(dst, arch="adm", config=config)
    np.testing.assert_array_equal(
        _forward(net, io), _forward(load_network(path, "adm", config), io)
    )
    np.testing.assert_array_equal(_forward(load_network(dst), io), _forward(net, io))  # own config
    with pytest.raises(ValueError, match="'adm' network, not arch 'ddpm'"):
        load_network(dst, arch="ddpm")


def test_convert_checks_the_tensors_against_a_given_config(guided, tmp_path):
    path, config, _ = guided
    other = {**config["create_model_kwargs"], "learn_sigma": False}
    with pytest.raises(ValueError, match=r"out\.2\.weight \(6, 32, 3, 3\) != \(3, 32, 3, 3\)"):
        convert_checkpoint(path, tmp_path / "x.safetensors", "adm", other)
    with pytest.raises(ValueError, match="safetensors"):
        convert_checkpoint(path, tmp_path / "x.pt")


def test_missing_and_unexpected_keys_are_listed(guided, tmp_path):
    path, config, _ = guided
    state = torch.load(path, weights_only=True)
    del state["input_blocks.1.0.in_layers.0.weight"]
    state["extra.weight"] = torch.zeros(3)
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    with pytest.raises(ValueError) as info:
        load_network(broken, arch="adm", config=config)
    message = str(info.value)
    assert "1 missing keys: input_blocks.1.0.in_layers.0.weight" in message
    assert "1 unexpected keys: extra.weight" in message


def test_bad_paths_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "absent.pt")
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        read_state_dict(tmp_path / "model.bin")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="state_dict"):
        read_state_dict(tmp_path / "list.pt")
    with pytest.raises(ValueError, match="config is required"):
        load_network(None, arch="adm")


def test_registry_name_replaces_path_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"celeba_hq\.ckpt"):
        load_network("celeba-hq-256", model_dir=tmp_path)
    with pytest.raises(ValueError, match="model_dir"):
        load_network("celeba-hq-256")


def test_cli_convert(guided, tmp_path, capsys):
    path, config, io = guided
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config["unet_kwargs"]))
    dst = tmp_path / "out.safetensors"
    assert main(["models", "convert", str(path), str(dst), "--config", str(config_file)]) == 0
    assert "306 tensors" in capsys.readouterr().out
    np.testing.assert_allclose(
        _forward(load_network(dst, "adm", config_file), io), io["out"], rtol=0, atol=2e-5
    )
