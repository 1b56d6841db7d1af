"""The network's GPU path on this CPU: bucket padding, autocast, channels_last and torch.compile
keep each sample's ε (to rounding, or to the stated half-precision bound), and the settings
reach the served model."""

from __future__ import annotations

import pytest
import torch

from contract.settings import Settings
from ddnm.models import as_denoiser
from ddnm.models.accelerate import Autocast, Bucketed, accelerate
from ddnm.models.adapters import HALF_REL_ERROR
from ddnm.schedules import linear_schedule
from pipeline.models import accelerated
from tests.conftest import fixture_network
from tests.data import record_closed_loop as recorded
from tests.test_batcher import guided_model

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
T = torch.tensor([10.0, 400.0, 900.0])


def guided_eps():  # -> EpsAdapter
    return as_denoiser(
        fixture_network("guided_small"),
        classifier=recorded.small_classifier(),
        schedule=linear_schedule(),
    )


def test_bucket_padding_keeps_every_samples_eps() -> None:
    eps = guided_eps()
    labels, scales = torch.tensor([1, 2, 3]), torch.tensor([0.0, 1.0, 2.0])
    seen: list[int] = []

    def counting(x: torch.Tensor, t: torch.Tensor, **kw: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return eps(x, t, **kw)

    padded = Bucketed(counting, [1, 2, 4, 8])(X, T, labels=labels, scales=scales)
    assert seen == [4] and padded.shape == X.shape
    assert torch.allclose(padded, eps(X, T, labels=labels, scales=scales), atol=1e-5)
    Bucketed(counting, [2])(X, T, labels=labels, scales=scales)  # larger than every bucket
    assert seen[-1] == 3


def test_autocast_stays_within_the_half_precision_bound() -> None:
    eps = guided_eps()
    exact = eps(X, T)
    half = Autocast(eps, torch.bfloat16, "cpu")(X, T)
    assert half.dtype == torch.float32
    relative = (half - exact).abs().max() / exact.abs().max()
    assert 0 < relative < HALF_REL_ERROR[torch.bfloat16]


@pytest.mark.slow
def test_channels_last_and_compile_keep_eps() -> None:
    """torch.compile on this CPU (inductor, about a minute for the small fixture)."""
    exact = as_denoiser(fixture_network("ddpm_small"))(X, T)
    fast = as_denoiser(accelerate(fixture_network("ddpm_small"), True, "default"))
    assert torch.allclose(fast(X, T), exact, atol=1e-4)
    assert torch.allclose(fast(X, T), exact, atol=1e-4)  # the compiled graph, reused


def test_settings_reach_the_served_model() -> None:
    model = guided_model()
    settings = Settings(channels_last=True, autocast="bfloat16", batch_buckets="2, 4")
    fast = accelerated(model, settings)
    assert isinstance(fast.eps, Bucketed) and list(fast.eps.buckets) == [2, 4]
    assert isinstance(fast.eps.eps, Autocast) and fast.eps.eps.dtype == torch.bfloat16
    conv = next(m for m in fast.eps.eps.eps.network.modules() if isinstance(m, torch.nn.Conv2d))  # type: ignore[attr-defined]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.eps(X[:1], T[:1]).shape == (1, 3, 32, 32)
