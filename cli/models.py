"""`ddnm models list | pull NAME | verify NAME | path NAME | convert IN OUT.safetensors`.

Downloaded checkpoints live in one directory: `--model-dir`, else the `DDNM_MODEL_DIR` environment
variable, else ~/.cache/ddnm/models.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "ddnm" / "models"


def model_dir(args: argparse.Namespace) -> Path:
    if args.model_dir is not None:
        return Path(args.model_dir)
    return Path(os.environ.get("DDNM_MODEL_DIR") or DEFAULT_MODEL_DIR)


def cmd_list(args: argparse.Namespace) -> int:
    from ddnm.models.registry import checkpoint_path, load_registry

    folder = model_dir(args)
    print(f"{'name':26} {'arch':15} {'size':>4} {'classes':7} {'present':7} licence")
    for entry in load_registry().values():
        present = "yes" if checkpoint_path(entry, folder).is_file() else "no"
        classes = "yes" if entry.class_conditional else "no"
        print(
            f"{entry.name:26} {entry.arch:15} {entry.image_size:>4} {classes:7} {present:7} "
            f"{entry.license}"
        )
    print(f"model directory: {folder}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from ddnm.models.registry import DownloadError, pull

    try:
        path = pull(args.name, model_dir(args), progress=not args.quiet)
    except DownloadError as err:
        print(f"ddnm models pull: error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ddnm.models.registry import checkpoint_path, verify

    digest = verify(args.name, model_dir(args))
    print(f"{digest}  {checkpoint_path(args.name, model_dir(args))}")
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    from ddnm.models.registry import checkpoint_path

    print(checkpoint_path(args.name, model_dir(args)))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ddnm.models.loading import convert_checkpoint, read_config

    config = None if args.config is None else read_config(args.config)
    count = convert_checkpoint(args.src, args.dst, args.arch, config)
    print(f"wrote {count} tensors to {args.dst}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list, download, verify and convert checkpoints")
    commands = parser.add_subparsers(dest="models_command", required=True)

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.set_defaults(func=func)
        return sub

    listing = command("list", cmd_list, "the registered models and whether they are present")
    pull = command("pull", cmd_pull, "download a model (resumes, verifies the SHA-256)")
    pull.add_argument("--quiet", action="store_true", help="no progress bar")
    verify = command("verify", cmd_verify, "check a downloaded model's SHA-256")
    path = command("path", cmd_path, "where a model's checkpoint lives")
    for sub in (listing, pull, verify, path):
        sub.add_argument("--model-dir", help="default: $DDNM_MODEL_DIR or ~/.cache/ddnm/models")
    for sub in (pull, verify, path):
        sub.add_argument("name", help="registry name (see `ddnm models list`)")
    convert = command("convert", cmd_convert, "rewrite a .pt / .ckpt checkpoint as .safetensors")
    convert.add_argument("src", help="input checkpoint (.pt, .ckpt, .pth, .safetensors)")
    convert.add_argument("dst", help="output file (.safetensors)")
    convert.add_argument(
        "--arch", default="adm", choices=("adm", "adm_classifier", "ddpm"), help="with --config"
    )
    convert.add_argument("--config", help="network config (JSON) to store in the file's header")
