"""Half-precision torsos (float16 / bfloat16) against float32 on the reference fixtures.

Measured on these 32x32 fixtures (CPU): max|out_half - out_f32| / max|out_f32| is about 1.9e-3
(float16) and 1.5e-2 (bfloat16); `HALF_REL_ERROR` states the bound the adapters document.
"""

from __future__ import annotations

import pytest
import torch

from ddnm.models import as_denoiser
from ddnm.models.adapters import HALF_REL_ERROR
from tests.conftest import FIXTURE_ARCHS, fixture_files, fixture_network


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("stem", sorted(FIXTURE_ARCHS))
def test_half_torso_within_stated_relative_error(stem, dtype):
    net = fixture_network(stem)
    _, _, io = fixture_files(stem)
    x, t = torch.from_numpy(io["x"]), torch.from_numpy(io["t"])
    eps32 = torch.from_numpy(io["out"])[:, :3]
    eps = as_denoiser(net, dtype=dtype)(x, t)
    assert eps.dtype == torch.float32
    rel = float((eps - eps32).abs().max() / eps32.abs().max())
    assert 0 < rel <= HALF_REL_ERROR[dtype]
    # the float32 islands: group norm parameters, embeddings and the output head
    for name, p in net.named_parameters():
        is_torso_conv = p.dtype == dtype
        assert is_torso_conv or p.dtype == torch.float32, name
        assert not (is_torso_conv and ("norm" in name or "emb" in name or "temb" in name)), name
