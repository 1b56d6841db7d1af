"""The model registry (`registry.json`, package data) and the model directory.

An entry names a network (architecture + config), its checkpoint file, where it comes from
(source URL, or `packaged` for weights shipped inside this package under `weights/`), its SHA-256,
licence, native image size, noise schedule and whether it is class-conditional (and which
classifier guides it). Downloaded checkpoints live in one directory, `model_dir`, which callers
pass in (the command line reads it from `DDNM_MODEL_DIR`).

A null `sha256` means the hash is not published: the first download computes it, records it in
`model_dir/sha256.json` with a warning, and later verifications compare against that record.

`pull` downloads to `<file>.part`, resuming a partial file with an HTTP Range request, verifies the
hash and only then renames the file to its final name, so a corrupt or incomplete file never sits
under that name. This module does not import torch.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

REGISTRY_FILE = Path(__file__).with_name("registry.json")
PACKAGED_WEIGHTS = Path(__file__).with_name("weights")
RECORDED_HASHES = "sha256.json"
ARCHS = ("adm", "adm_classifier", "ddpm")
CHUNK = 1 << 20


class DownloadError(ConnectionError):
    """The source of a checkpoint could not be reached or stopped mid-transfer."""


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    arch: str  # "adm" | "adm_classifier" | "ddpm"
    config: Mapping[str, Any]  # as load_network accepts it
    file: str  # checkpoint file name (in model_dir, or in weights/ when packaged)
    url: str | None  # direct download URL; None for packaged weights
    sha256: str | None  # lowercase hex; None: recorded on first download
    license: str
    image_size: int  # native resolution (pixels per side)
    schedule: Mapping[str, Any]  # {"kind": "linear", "num_timesteps", "beta_start", "beta_end"}
    class_conditional: bool
    classifier: str | None = None  # registry name of the guiding classifier
    packaged: bool = False
    description: str = ""
    alt_urls: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"{self.name}: arch must be one of {ARCHS}, got {self.arch!r}")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits or null")
        if self.url is None and not self.packaged:
            raise ValueError(f"{self.name}: an entry needs a url unless it is packaged")


def load_registry(path: Path = REGISTRY_FILE) -> dict[str, RegistryEntry]:
    """All entries of a registry file, by name, in file order."""
    raw = json.loads(Path(path).read_text())
    return {
        name: RegistryEntry(name=name, **{**e, "alt_urls": tuple(e.get("alt_urls", ()))})
        for name, e in raw.items()
    }


def get_entry(name: str, registry: Mapping[str, RegistryEntry] | None = None) -> RegistryEntry:
    registry = load_registry() if registry is None else registry
    if name not in registry:
        raise ValueError(f"model must be one of {sorted(registry)}, got {name!r}")
    return registry[name]


def _entry(model: RegistryEntry | str) -> RegistryEntry:
    return model if isinstance(model, RegistryEntry) else get_entry(model)


def checkpoint_path(model: RegistryEntry | str, model_dir: Path | None) -> Path:
    """Where the checkpoint lives: in the package for packaged weights, else in model_dir."""
    entry = _entry(model)
    if entry.packaged:
        return PACKAGED_WEIGHTS / entry.file
    if model_dir is None:
        raise ValueError(f"model_dir is required for {entry.name} (a downloaded model)")
    return Path(model_dir) / entry.file


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded(model_dir: Path | None) -> dict[str, str]:
    path = None if model_dir is None else Path(model_dir) / RECORDED_HASHES
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def expected_sha256(entry: RegistryEntry, model_dir: Path | None) -> str | None:
    """The registry's hash, else the one recorded at the first download, else None."""
    return entry.sha256 or _recorded(model_dir).get(entry.name)


def _record(entry: RegistryEntry, model_dir: Path | None, digest: str) -> None:
    warnings.warn(
        f"{entry.name}: no published SHA-256; recorded {digest} from this copy in "
        f"{RECORDED_HASHES} and will check later copies against it",
        stacklevel=3,
    )
    if model_dir is not None:
        recorded = {**_recorded(model_dir), entry.name: digest}
        (Path(model_dir) / RECORDED_HASHES).write_text(json.dumps(recorded, indent=2) + "\n")


def verify(model: RegistryEntry | str, model_dir: Path | None) -> str:
    """Hash the checkpoint and compare it with the expected SHA-256; returns the hash.

    Raises FileNotFoundError when the file is absent and ValueError on a mismatch. Without an
    expected hash, the computed one is recorded (with a warning).
    """
    entry = _entry(model)
    path = checkpoint_path(entry, model_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{entry.name}: {path} not found; {_by_hand(entry, path)}")
    digest = sha256_file(path)
    expected = expected_sha256(entry, model_dir)
    if expected is None:
        _record(entry, model_dir, digest)
    elif digest != expected:
        raise ValueError(f"{entry.name}: {path} has SHA-256 {digest}, expected {expected}")
    return digest


def _by_hand(entry: RegistryEntry, path: Path) -> str:
    if entry.packaged:
        return "this installation does not ship its weights (reinstall or train it)"
    sources = " or ".join((entry.url or "", *entry.alt_urls))
    return f"download {entry.file} from {sources} and put it at {path}"


def _fetch(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append the rest of `url` to `part` (an HTTP Range request when part is non-empty)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with httpx.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as r:
        if r.status_code == 416:  # nothing left to fetch: the partial file is complete
            return
        r.raise_for_status()
        if r.status_code != 206:  # the server ignored the Range header: start over
            offset = 0
        remaining = r.headers.get("content-length")
        total = offset + int(remaining) if remaining is not None else None
        with (
            part.open("ab" if offset else "wb") as f,
            tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, disable=not progress
            ) as bar,
        ):
            for chunk in r.iter_bytes():  # as received: a broken transfer keeps every byte
                f.write(chunk)
                bar.update(len(chunk))


def pull(
    model: RegistryEntry | str,
    model_dir: Path,
    *,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download the checkpoint into model_dir (resuming a partial download) and verify it.

    Returns its path. A file already present that verifies is kept; one that does not is
    replaced. Raises DownloadError (naming the URL and where to put the file by hand) when the
    source is unreachable or the transfer breaks (the partial file is kept for the next pull), and
    ValueError on a hash mismatch (the downloaded data is deleted).
    """
    entry = _entry(model)
    path = checkpoint_path(entry, model_dir)
    if entry.packaged or path.is_file():
        try:
            verify(entry, model_dir)
            return path
        except ValueError as err:
            if entry.packaged:
                raise
            warnings.warn(f"{err}; downloading it again", stacklevel=2)
            path.unlink()
    assert entry.url is not None  # every entry that is not packaged has one
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        _fetch(entry.url, part, progress, timeout)
    except httpx.HTTPError as err:
        raise DownloadError(
            f"{entry.name}: could not download {entry.url} ({type(err).__name__}: {err}); "
            f"run the pull again to resume, or {_by_hand(entry, path)}"
        ) from err
    digest = sha256_file(part)
    expected = expected_sha256(entry, model_dir)
    if expected is not None and digest != expected:
        part.unlink()
        raise ValueError(
            f"{entry.name}: downloaded data has SHA-256 {digest}, expected {expected}; deleted it"
        )
    part.replace(path)
    if expected is None:
        _record(entry, model_dir, digest)
    return path
