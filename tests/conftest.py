"""Shared test fixtures: where the reference data lives, and small helpers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "fixtures" / "reference"
# the two small reference networks: name -> architecture
FIXTURE_ARCHS = {"ddpm_small": "ddpm", "guided_small": "adm"}


def fixture_files(name: str) -> tuple[Path, dict, dict]:
    """(state_dict path, config JSON, stored inputs/outputs) of a reference network fixture."""
    import numpy as np

    folder = REFERENCE / "models"
    config = json.loads((folder / f"{name}_config.json").read_text())
    return folder / f"{name}_state_dict.pt", config, dict(np.load(folder / f"{name}_io.npz"))


def fixture_network(name: str):  # -> torch.nn.Module
    """A reference network fixture loaded through `ddnm.models.load_network` (strict)."""
    from ddnm.models import load_network

    path, config, _ = fixture_files(name)
    return load_network(path, arch=FIXTURE_ARCHS[name], config=config)


# worker settings that serve the small reference network (32x32, random weights) instead of the
# default model: fast and independent of the shipped weights, for the service tests
FIXTURE_MODEL_ENV = {
    "DDNM_MODEL": "guided-small-fixture",
    "DDNM_MODEL_FILE": str(REFERENCE / "models" / "guided_small_state_dict.pt"),
    "DDNM_MODEL_CONFIG_FILE": str(REFERENCE / "models" / "guided_small_config.json"),
}


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The golden data produced with the authors' code (checked out beside this repository)."""
    if not REFERENCE.is_dir():
        raise FileNotFoundError(f"reference fixtures not found at {REFERENCE}")
    return REFERENCE


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server on a free loopback port, for the tests that need a real Redis
    (each flushes it first); tests that stop or restart Redis start their own."""
    from cli.embedded import RedisServer

    with RedisServer() as url:
        yield url


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    """A client of that server, emptied first."""
    client = Redis.from_url(redis_url)
    client.flushall()
    yield client
    client.close()
