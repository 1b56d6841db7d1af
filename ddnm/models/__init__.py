"""The diffusion networks DDNM runs on, their checkpoints and the denoiser adapters.

    load_network(path, arch, config)   a network (guided-diffusion ADM UNet "adm", its noisy-image
                                       classifier "adm_classifier", DDPM `Model` "ddpm")
    as_denoiser(network, ...)          the sampler's ε-model `eps(x_t, t, labels, scales)`
    load_registered(name, model_dir)   a registry model: (network, entry, checkpoint sha256)

Names are imported lazily so that importing the command line does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "load_network": "ddnm.models.loading",
    "build_network": "ddnm.models.loading",
    "read_state_dict": "ddnm.models.loading",
    "convert_checkpoint": "ddnm.models.loading",
    "load_registered": "ddnm.models.loading",
    "registered_schedule": "ddnm.models.loading",
    "as_denoiser": "ddnm.models.adapters",
    "ClassifierGuidance": "ddnm.models.adapters",
}

if TYPE_CHECKING:
    from ddnm.models.adapters import ClassifierGuidance, as_denoiser
    from ddnm.models.loading import (
        build_network,
        convert_checkpoint,
        load_network,
        load_registered,
        read_state_dict,
        registered_schedule,
    )

__all__ = [
    "ClassifierGuidance",
    "as_denoiser",
    "build_network",
    "convert_checkpoint",
    "load_network",
    "load_registered",
    "read_state_dict",
    "registered_schedule",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ddnm.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
