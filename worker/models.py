"""The model a worker process serves: loaded once at start-up, shared by all its jobs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from contract.jobs import ModelInfo
from contract.settings import Settings
from contract.spec import TaskSpec
from ddnm.models import as_denoiser, load_network
from ddnm.sampling import Denoiser
from ddnm.schedules import Schedule, linear_schedule


@dataclass(frozen=True)
class ServedModel:
    info: ModelInfo
    network: nn.Module  # on `device`, in the configured torso dtype
    classifier: nn.Module | None
    schedule: Schedule
    device: torch.device

    def denoiser(self, spec: TaskSpec) -> Denoiser:
        """ε_θ for one job: its class label and, when guidance_scale > 0, classifier guidance."""
        guided = spec.guidance_scale > 0
        return as_denoiser(
            self.network,
            class_label=spec.class_label,
            classifier=self.classifier if guided else None,
            classifier_scale=spec.guidance_scale,
            schedule=self.schedule,
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def native_size(network: nn.Module) -> int:
    """The image side the network was trained at (ADM `image_size`, DDPM `resolution`)."""
    size = getattr(network, "image_size", None) or getattr(network, "resolution", None)
    if not isinstance(size, int):
        raise ValueError(f"cannot tell the image size of {type(network).__name__}")
    return size


def load_model(settings: Settings) -> ServedModel:
    """Load the configured model onto the configured device (raises with the reason on failure)."""
    device = resolve_device(settings.device)
    if settings.model_file is None:
        raise NotImplementedError("registry models")
    network = load_network(
        settings.model_file, arch=settings.model_arch, config=settings.model_config_file
    )
    sha256 = file_sha256(settings.model_file)
    as_denoiser(network, device=device, dtype=getattr(torch, settings.dtype))  # moves, converts
    info = ModelInfo(
        name=settings.model,
        checkpoint_sha256=sha256,
        image_size=native_size(network),
        class_conditional=getattr(network, "num_classes", None) is not None,
    )
    return ServedModel(info, network, None, linear_schedule(), device)
