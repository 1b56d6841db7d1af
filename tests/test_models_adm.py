"""The guided-diffusion ADM UNet: fixture parity, strict loading, fresh builds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddnm.models import load_network
from ddnm.models.adm_unet import UNetModel
from tests.conftest import fixture_files
from tests.test_models_fixtures import ATOL_F32


@pytest.fixture(scope="module")
def guided():
    return fixture_files("guided_small")


@pytest.mark.parametrize("form", ["fixture", "create_model_kwargs", "unet_kwargs"])
def test_small_fixture_reproduces_float32_output(guided, form):
    path, config, io = guided
    cfg = config if form == "fixture" else config[form]
    net = load_network(path, arch="adm", config=cfg)
    assert isinstance(net, UNetModel)
    with torch.no_grad():
        out = net(torch.from_numpy(io["x"]), torch.from_numpy(io["t"]))
    assert out.shape == (2, 6, 32, 32)
    np.testing.assert_allclose(out.numpy(), io["out"], rtol=0, atol=ATOL_F32)


def test_fresh_build_zero_inits_outputs_and_trains():
    torch.manual_seed(0)
    config = {
        "image_size": 8,
        "num_channels": 32,
        "num_res_blocks": 1,
        "channel_mult": "1,2",
        "attention_resolutions": "4",
        "num_head_channels": 16,
        "learn_sigma": False,
        "use_scale_shift_norm": True,
        "resblock_updown": True,
    }
    net = load_network(None, arch="adm", config=config).train()
    x, t = torch.randn(4, 3, 8, 8), torch.tensor([1.0, 10.0, 100.0, 999.0])
    assert torch.count_nonzero(net(x, t)) == 0  # output conv is zero-initialised
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    target = torch.randn(4, 3, 8, 8)
    losses = []
    for _ in range(6):
        loss = (net(x, t) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def test_class_labels_required_exactly_for_class_conditional():
    config = {
        "image_size": 8,
        "num_channels": 32,
        "num_res_blocks": 1,
        "channel_mult": "1",
        "attention_resolutions": "",
        "class_cond": True,
        "use_scale_shift_norm": True,  # without it, 1-channel groups would erase emb
    }
    torch.manual_seed(0)
    net = load_network(None, arch="adm", config=config)
    assert net.label_emb.weight.shape == (1000, 128)
    for p in net.parameters():
        p.data.normal_(0.0, 0.05)
    x, t = torch.randn(1, 3, 8, 8).repeat(2, 1, 1, 1), torch.tensor([5.0, 5.0])
    with pytest.raises(ValueError, match="class labels"):
        net(x, t)
    out = net(x, t, torch.tensor([0, 1]))
    assert not torch.allclose(out[0], out[1])


def test_input_size_must_fit_the_downsampling():
    """Any size works that the levels can halve (here 3 levels: multiples of 4); others are a
    ValueError naming the multiple, not a shape error deep inside the decoder."""
    config = {
        "image_size": 16,
        "num_channels": 32,
        "num_res_blocks": 1,
        "channel_mult": "1,1,2",
        "attention_resolutions": "",
    }
    net = load_network(None, arch="adm", config=config)
    t = torch.tensor([10.0])
    assert net(torch.zeros(1, 3, 12, 20), t).shape == (1, 3, 12, 20)
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.zeros(1, 3, 18, 16), t)
