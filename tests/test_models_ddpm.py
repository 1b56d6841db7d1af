"""The DDPM `Model` (CelebA-HQ family): fixture parity in float32 and float64, config forms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddnm.models import load_network
from ddnm.models.ddpm_unet import Model

ATOL_F32 = 2e-5  # reference README §2


@pytest.fixture(scope="module")
def ddpm(reference_dir):
    models = reference_dir / "models"
    config = json.loads((models / "ddpm_small_config.json").read_text())
    io = dict(np.load(models / "ddpm_small_io.npz"))
    return models / "ddpm_small_state_dict.pt", config, io


def _config_forms(config):
    tree = config["config"]
    return {
        "fixture": config,
        "yaml_tree": tree,
        "manifest": {"model_config": tree["model"], "image_size": 32},
        "flat": {**tree["model"], "image_size": 32},
    }


@pytest.mark.parametrize("form", ["fixture", "yaml_tree", "manifest", "flat"])
def test_small_fixture_reproduces_float32_output(ddpm, form):
    path, config, io = ddpm
    net = load_network(path, arch="ddpm", config=_config_forms(config)[form])
    assert isinstance(net, Model)
    with torch.no_grad():
        out = net(torch.from_numpy(io["x"]), torch.from_numpy(io["t"]))
    np.testing.assert_allclose(out.numpy(), io["out"], rtol=0, atol=ATOL_F32)


def test_small_fixture_float64_matches_reference_float64(ddpm):
    path, config, io = ddpm
    net = load_network(path, arch="ddpm", config=config).double()
    with torch.no_grad():
        out = net(torch.from_numpy(io["x"]).double(), torch.from_numpy(io["t"]).double())
    np.testing.assert_allclose(out.numpy(), io["out_f64"], rtol=0, atol=1e-12)


def test_state_dict_order_and_size_match_fixture(ddpm):
    path, config, _ = ddpm
    with torch.device("meta"):
        net = load_network(None, arch="ddpm", config=config)
    stored = torch.load(path, weights_only=True)
    assert [(k, v.shape) for k, v in net.state_dict().items()] == [
        (k, v.shape) for k, v in stored.items()
    ]
    assert sum(p.numel() for p in net.parameters()) == config["num_params"]


def test_wrong_resolution_and_incomplete_config_are_rejected(ddpm):
    _, config, _ = ddpm
    net = load_network(None, arch="ddpm", config=config)
    with pytest.raises(ValueError, match="32x32"):
        net(torch.zeros(1, 3, 16, 16), torch.zeros(1))
    with pytest.raises(ValueError, match="image_size"):
        load_network(None, arch="ddpm", config=config["config"]["model"])
