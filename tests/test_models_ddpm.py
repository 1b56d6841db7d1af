"""The DDPM `Model` (CelebA-HQ family): fixture parity in float32 and float64, config forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddnm.models import load_network
from ddnm.models.ddpm_unet import Model
from tests.conftest import fixture_files
from tests.test_models_fixtures import ATOL_F32


@pytest.fixture(scope="module")
def ddpm():
    return fixture_files("ddpm_small")


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


def test_wrong_resolution_and_incomplete_config_are_rejected(ddpm):
    _, config, _ = ddpm
    net = load_network(None, arch="ddpm", config=config)
    with pytest.raises(ValueError, match="32x32"):
        net(torch.zeros(1, 3, 16, 16), torch.zeros(1))
    with pytest.raises(ValueError, match="image_size"):
        load_network(None, arch="ddpm", config=config["config"]["model"])
