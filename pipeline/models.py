"""The model a job runs on: loaded once (by a worker at start-up, by `ddnm restore` per call) and
shared by all its jobs, as one ε-model that takes each sample's class label and guidance scale
with every call."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from contract.jobs import ModelInfo
from contract.settings import Settings, split
from ddnm.models import as_denoiser, load_network, load_registered, registered_schedule, registry
from ddnm.models.accelerate import Autocast, Bucketed, accelerate
from ddnm.models.adapters import EpsAdapter
from ddnm.sampling import EpsModel
from ddnm.schedules import Schedule, linear_schedule


@dataclass(frozen=True)
class ServedModel:
    info: ModelInfo
    eps: EpsModel  # the network (and classifier) on `device`, as configured (`accelerated`)
    schedule: Schedule
    device: torch.device


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


def served(
    info: ModelInfo,
    network: nn.Module,
    classifier: nn.Module | None,
    schedule: Schedule,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> ServedModel:
    """`network` (and its guidance classifier) on `device`, torso in `dtype`, as one ε-model."""
    eps = as_denoiser(network, device=device, dtype=dtype, classifier=classifier, schedule=schedule)
    return ServedModel(info, eps, schedule, device)


def load_model(settings: Settings) -> ServedModel:
    """Load the configured model onto the configured device: a registry model (downloaded into
    DDNM_MODEL_DIR first if needed, checksum verified) or a checkpoint file, with the configured
    GPU path (`accelerated`). Raises with the reason when it cannot."""
    device, dtype = resolve_device(settings.device), getattr(torch, settings.dtype)
    if settings.model_file is not None:
        return accelerated(_load_file(settings, device, dtype), settings)
    entry = registry.get_entry(settings.model)
    settings.model_dir.mkdir(parents=True, exist_ok=True)
    for name in filter(None, (entry.name, entry.classifier)):
        registry.pull(name, settings.model_dir, progress=False)
    return accelerated(_load_registered(entry.name, settings.model_dir, device, dtype), settings)


def accelerated(model: ServedModel, settings: Settings) -> ServedModel:
    """The model's network in channels_last and compiled (DDNM_CHANNELS_LAST, DDNM_COMPILE_MODE),
    its forward under autocast (DDNM_AUTOCAST) on batches padded to DDNM_BATCH_BUCKETS."""
    assert isinstance(model.eps, EpsAdapter), "accelerated once, on the loaded model"
    accelerate(model.eps.network, settings.channels_last, settings.compile_mode)
    eps: EpsModel = model.eps
    if settings.autocast != "off":
        eps = Autocast(eps, getattr(torch, settings.autocast), model.device.type)
    buckets = [int(b) for b in split(settings.batch_buckets)]
    if buckets:
        eps = Bucketed(eps, buckets)
    return replace(model, eps=eps)


def load_named(model: str, model_dir: Path | None, device: str = "cpu") -> ServedModel:
    """A registered model by name (downloaded ones looked up in `model_dir`), or a .safetensors
    file whose header holds its network config (`ddnm train` writes such files)."""
    path = Path(model)
    if path.suffix != ".safetensors":
        return _load_registered(model, model_dir, resolve_device(device), torch.float32)
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if "config" not in metadata:
        raise ValueError(f"{path} has no network config in its header; use a model name")
    network = load_network(
        path, arch=metadata.get("arch", "adm"), config=json.loads(metadata["config"])
    )
    info = _file_info(path.stem, path, network)
    return served(info, network, None, linear_schedule(), resolve_device(device))


def _load_registered(
    name: str, model_dir: Path | None, device: torch.device, dtype: torch.dtype
) -> ServedModel:
    """A registry model (and its guidance classifier, float32) on `device`, torso in `dtype`."""
    network, entry, sha256 = load_registered(name, model_dir, device, dtype)
    classifier = None
    if entry.classifier is not None:
        classifier = load_registered(entry.classifier, model_dir, device)[0]
    info = ModelInfo(
        name=entry.name,
        checkpoint_sha256=sha256,
        image_size=entry.image_size,
        class_conditional=entry.class_conditional,
        classifier=classifier is not None,
    )
    return served(info, network, classifier, registered_schedule(entry), device)


def _file_info(name: str, path: Path, network: nn.Module) -> ModelInfo:
    return ModelInfo(
        name=name,
        checkpoint_sha256=registry.sha256_file(path),
        image_size=native_size(network),
        class_conditional=getattr(network, "num_classes", None) is not None,
    )


def _load_file(settings: Settings, device: torch.device, dtype: torch.dtype) -> ServedModel:
    """A checkpoint outside the registry (DDNM_MODEL_FILE + DDNM_MODEL_CONFIG_FILE), served as
    DDNM_MODEL on the linear schedule."""
    assert settings.model_file is not None
    network = load_network(
        settings.model_file, arch=settings.model_arch, config=settings.model_config_file
    )
    info = _file_info(settings.model, settings.model_file, network)
    return served(info, network, None, linear_schedule(), device, dtype)
