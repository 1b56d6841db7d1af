"""Both reference network fixtures: float64 parity and state_dict layout (one test per property,
parametrised over the DDPM `Model` and the guided UNet)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddnm.models import load_network
from tests.conftest import FIXTURE_ARCHS, fixture_files, fixture_network

ATOL_F32 = 2e-5  # reference README §2: about 10x the observed float32 error


@pytest.mark.parametrize("name", sorted(FIXTURE_ARCHS))
def test_float64_run_matches_reference_float64(name):
    _, _, io = fixture_files(name)
    net = fixture_network(name).double()
    with torch.no_grad():
        out = net(torch.from_numpy(io["x"]).double(), torch.from_numpy(io["t"]).double())
    np.testing.assert_allclose(out.numpy(), io["out_f64"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(FIXTURE_ARCHS))
def test_state_dict_order_and_size_match_fixture(name):
    path, config, _ = fixture_files(name)
    with torch.device("meta"):
        net = load_network(None, arch=FIXTURE_ARCHS[name], config=config)
    stored = torch.load(path, weights_only=True)
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == [
        (k, tuple(v.shape)) for k, v in stored.items()
    ]
    assert sum(p.numel() for p in net.parameters()) == config["num_params"]
