"""The model a worker process serves: loaded once at start-up, shared by all its jobs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from contract.jobs import ModelInfo
from contract.settings import Settings
from contract.spec import TaskSpec
from ddnm.models import as_denoiser, load_network, load_registered, registered_schedule, registry
from ddnm.models.adapters import prepare
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


def native_size(network: nn.Module) -> int:
    """The image side the network was trained at (ADM `image_size`, DDPM `resolution`)."""
    size = getattr(network, "image_size", None) or getattr(network, "resolution", None)
    if not isinstance(size, int):
        raise ValueError(f"cannot tell the image size of {type(network).__name__}")
    return size


def load_model(settings: Settings) -> ServedModel:
    """Load the configured model onto the configured device: a registry model (downloaded into
    DDNM_MODEL_DIR first if needed, checksum verified) or a checkpoint file. Raises with the
    reason when it cannot."""
    device, dtype = resolve_device(settings.device), getattr(torch, settings.dtype)
    if settings.model_file is not None:
        return _load_file(settings, device, dtype)
    entry = registry.get_entry(settings.model)
    settings.model_dir.mkdir(parents=True, exist_ok=True)
    for name in filter(None, (entry.name, entry.classifier)):
        registry.pull(name, settings.model_dir, progress=False)
    network, entry, sha256 = load_registered(entry, settings.model_dir, device, dtype)
    classifier = None
    if entry.classifier is not None:
        classifier = load_registered(entry.classifier, settings.model_dir, device)[0]
    info = ModelInfo(
        name=entry.name,
        checkpoint_sha256=sha256,
        image_size=entry.image_size,
        class_conditional=entry.class_conditional,
        classifier=classifier is not None,
    )
    return ServedModel(info, network, classifier, registered_schedule(entry), device)


def _load_file(settings: Settings, device: torch.device, dtype: torch.dtype) -> ServedModel:
    """A checkpoint outside the registry (DDNM_MODEL_FILE + DDNM_MODEL_CONFIG_FILE), served as
    DDNM_MODEL on the linear schedule."""
    assert settings.model_file is not None
    network = load_network(
        settings.model_file, arch=settings.model_arch, config=settings.model_config_file
    )
    info = ModelInfo(
        name=settings.model,
        checkpoint_sha256=registry.sha256_file(settings.model_file),
        image_size=native_size(network),
        class_conditional=getattr(network, "num_classes", None) is not None,
    )
    return ServedModel(info, prepare(network, device, dtype), None, linear_schedule(), device)
