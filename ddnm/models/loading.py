"""Build the networks from their configs and load checkpoints safely.

Checkpoint formats: `.safetensors` (preferred: no code can run while loading) and `.pt` / `.ckpt` /
`.pth`, which are read only through `torch.load(weights_only=True)`: a pickle that would build
anything but tensors and plain containers (and so could execute code) is refused. Keys are checked
before loading: missing or unexpected keys and shape mismatches raise a `ValueError` listing them.

Architectures (`arch`) and the config forms each accepts (a dict, or a path to a JSON file):
    "adm"             guided-diffusion UNetModel: `unet_kwargs` / `create_model_kwargs` (nested or
                      flat), see `adm_unet.unet_from_config`
    "adm_classifier"  guided-diffusion noisy-image classifier: `create_classifier_kwargs` or the
                      encoder's kwargs, see `adm_classifier.classifier_from_config`
    "ddpm"            DDPM `Model` (CelebA-HQ): the model dict plus `image_size`, see
                      `ddpm_unet.model_from_config`
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ddnm.models.adm_classifier import classifier_from_config
from ddnm.models.adm_unet import unet_from_config
from ddnm.models.ddpm_unet import model_from_config
from ddnm.models.registry import RegistryEntry, checkpoint_path, get_entry, load_registry, verify
from ddnm.schedules import Schedule, linear_schedule

Config = Mapping[str, object]
BUILDERS: dict[str, Callable[[Config], nn.Module]] = {
    "adm": unet_from_config,
    "adm_classifier": classifier_from_config,
    "ddpm": model_from_config,
}
PICKLE_SUFFIXES = (".pt", ".ckpt", ".pth")
MAX_LISTED_KEYS = 40


def read_config(config: Config | str | Path) -> Config:
    """A config dict, or the dict stored in a JSON file."""
    if isinstance(config, str | Path):
        return json.loads(Path(config).read_text())
    return config


def build_network(arch: str, config: Config | str | Path) -> nn.Module:
    """A network of `arch` with the reference's random initialisation, in eval mode.

    Builds on the current default device, so `with torch.device("meta"):` allocates nothing.
    """
    if arch not in BUILDERS:
        raise ValueError(f"arch must be one of {sorted(BUILDERS)}, got {arch!r}")
    return BUILDERS[arch](read_config(config)).eval()


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint file, on the CPU, without executing any code from it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    if path.suffix not in PICKLE_SUFFIXES:
        raise ValueError(
            f"checkpoint suffix must be .safetensors or one of {PICKLE_SUFFIXES}, got {path.name}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"refused to load {path}: it is not a plain tensor checkpoint and unpickling it could "
            f"execute code ({str(err).splitlines()[0]})"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state_dict (a dict of tensors)")
    return state


def _listing(kind: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    more = f" ... and {len(keys) - MAX_LISTED_KEYS} more" if len(keys) > MAX_LISTED_KEYS else ""
    return f"{len(keys)} {kind}: {shown}{more}"


def check_state_dict(network: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Raise ValueError listing missing keys, unexpected keys and shape mismatches."""
    expected = network.state_dict()
    problems = []
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    for kind, keys in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches (checkpoint != network)", mismatched),
    ):
        if keys:
            problems.append(_listing(kind, keys))
    if problems:
        raise ValueError("checkpoint does not match the network: " + "; ".join(problems))


def load_weights(network: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Load `state_dict` strictly into `network` (which may live on the meta device: the loaded
    tensors are then assigned, cast to the network's parameter dtypes)."""
    check_state_dict(network, state_dict)
    current = network.state_dict()
    cast = {k: v.to(current[k].dtype) for k, v in state_dict.items()}
    network.load_state_dict(cast, strict=True, assign=True)
    return network


def stored_config(path: str | Path) -> tuple[str | None, Config | None]:
    """(arch, config) recorded in a .safetensors header by `convert_checkpoint`, else None's."""
    if Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return None, None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    config = json.loads(metadata["config"]) if "config" in metadata else None
    return metadata.get("arch"), config


def load_network(
    path: str | Path | None,
    arch: str = "adm",
    config: Config | str | Path | None = None,
    *,
    model_dir: Path | None = None,
) -> nn.Module:
    """The network of `arch` built from `config`, with the weights of checkpoint `path` (float32,
    CPU, eval mode), or freshly initialised when `path` is None (on the default device: use
    `with torch.device("meta"):` to build without allocating).

    `path` may also be a registry name: its checkpoint (in `model_dir` unless packaged), arch and
    config then replace the arguments. Without `config`, a .safetensors checkpoint's own (stored
    by `convert_checkpoint`) is used.
    """
    if isinstance(path, str) and path in load_registry():
        entry = get_entry(path)
        path, arch, config = checkpoint_path(entry, model_dir), entry.arch, entry.config
    if config is None and path is not None:
        stored_arch, config = stored_config(path)
        if stored_arch not in (None, arch):
            raise ValueError(f"{path} holds an {stored_arch!r} network, not arch {arch!r}")
    if config is None:
        raise ValueError(
            f"config is required to build arch {arch!r} (a .safetensors file written by "
            "`ddnm models convert --config` carries its own)"
        )
    if path is None:
        return build_network(arch, config)
    state_dict = read_state_dict(path)
    with torch.device("meta"):
        network = build_network(arch, config)
    return load_weights(network, state_dict)


def convert_checkpoint(
    src: str | Path, dst: str | Path, arch: str = "adm", config: Config | None = None
) -> int:
    """Rewrite checkpoint `src` (.pt / .ckpt / .safetensors) as `dst` (.safetensors), returning
    the number of tensors written. The tensors are stored unchanged (dtype and values). With a
    `config`, the tensors are first checked against that network, and `arch` and the config (as
    JSON) are stored in the file's header (metadata keys "arch" and "config")."""
    from safetensors.torch import save_file

    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"dst must end in .safetensors, got {dst.name}")
    state = read_state_dict(src)
    metadata = None
    if config is not None:
        with torch.device("meta"):
            check_state_dict(build_network(arch, config), state)
        metadata = {"arch": arch, "config": json.dumps(config)}
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, dst, metadata)
    return len(state)


def registered_schedule(entry: RegistryEntry) -> Schedule:
    """The noise schedule a registry model was trained with."""
    kwargs = dict(entry.schedule)
    if kwargs.pop("kind") != "linear":
        raise ValueError(f"{entry.name}: only linear schedules are supported")
    return linear_schedule(**kwargs)


def load_registered(
    name: str | RegistryEntry,
    model_dir: Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, RegistryEntry, str]:
    """A registry model ready to run: (network, its registry entry, the checkpoint's SHA-256).

    `name`: a registry name (or an entry, e.g. a mirror's copy of one).
    The checkpoint is verified against the registry's hash (or the one recorded at download)
    before loading; `model_dir` is where downloaded checkpoints live (packaged models ignore it).
    The network is moved to `device` with its torso in `dtype` (float16 / bfloat16: the
    reference's mixed-precision split; see adapters.py). Raises FileNotFoundError, naming the
    `ddnm models pull` command and the URL, when the checkpoint is absent.
    """
    from ddnm.models.adapters import prepare

    entry = name if isinstance(name, RegistryEntry) else get_entry(name)
    try:
        sha256 = verify(entry, model_dir)
    except FileNotFoundError as err:
        hint = "" if entry.packaged else f"run `ddnm models pull {entry.name}`, or "
        raise FileNotFoundError(f"{hint}{err}") from err
    network = load_network(checkpoint_path(entry, model_dir), entry.arch, entry.config)
    return prepare(network, device, dtype), entry, sha256
