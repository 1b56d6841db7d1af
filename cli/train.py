"""`ddnm train`: DDPM training of an ε-prediction network on a folder of images.

The output folder holds `checkpoint.pt` (full state, rewritten every --checkpoint-every steps and
at the end), `loss.csv` (step, loss) and, at the end, `ema.safetensors` (the EMA weights with the
network config in the header). `--resume` continues from `checkpoint.pt` to the same total
--steps; `--init` starts from trained weights (fine-tuning) instead of a fresh network.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ddnm.training import TrainOptions


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a small ε-prediction UNet (DDPM) on a folder of images"
    )
    parser.add_argument("--data", required=True, type=Path, help="folder of training images")
    parser.add_argument("--out", required=True, type=Path, help="folder for checkpoint and logs")
    parser.add_argument(
        "--config",
        required=True,
        help="network config: a JSON file or a JSON object (create_model-style keyword arguments)",
    )
    parser.add_argument("--arch", default="adm", help="network architecture (default: adm)")
    parser.add_argument("--steps", type=int, required=True, help="total optimiser steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--crop-size", type=int, default=None, help="default: config image_size")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument(
        "--init",
        help="start from these weights (a .safetensors file or registered model name) instead "
        "of a fresh network: fine-tuning; the optimiser starts afresh",
    )
    parser.set_defaults(func=run)


def read_config(text: str) -> dict:
    """A JSON object given inline or as the path of a JSON file."""
    stripped = text.strip()
    config = json.loads(stripped if stripped.startswith("{") else Path(text).read_text())
    if not isinstance(config, dict):
        raise ValueError(f"--config must be a JSON object, got {type(config).__name__}")
    return config


def _truncate_log(log: Path, step: int) -> None:
    """Drop rows of loss.csv written after the checkpoint that a resumed run starts from."""
    if not log.exists():
        return
    rows = log.read_text().splitlines()
    kept = [rows[0]] + [r for r in rows[1:] if int(r.split(",")[0]) <= step]
    log.write_text("\n".join(kept) + "\n")


def train_options(args: argparse.Namespace, config: dict) -> TrainOptions:
    from ddnm.training import TrainOptions

    return TrainOptions(
        steps=args.steps,
        batch_size=args.batch_size,
        crop_size=args.crop_size or int(config.get("image_size", 32)),
        lr=args.lr,
        ema_decay=args.ema,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ddnm import training
    from ddnm.models import load_network
    from ddnm.schedules import linear_schedule

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = read_config(args.config)
    options = train_options(args, config)
    crop_size = options.crop_size
    images = training.load_images(args.data, crop_size)
    torch.manual_seed(options.seed)
    network = load_network(args.init, arch=args.arch, config=config).train()
    state = training.new_state(network, config, options)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint, log = args.out / "checkpoint.pt", args.out / "loss.csv"
    if args.resume:
        training.load_checkpoint(state, checkpoint)
        _truncate_log(log, state.step)
    else:
        log.write_text("step,loss\n")
    n_params = sum(p.numel() for p in state.model.parameters())
    print(f"{len(images)} images, {n_params:,} parameters, starting at step {state.step}")

    bar = tqdm(total=options.steps, initial=state.step, desc="train", unit="step")
    with log.open("a") as log_file:

        def on_step(step: int, loss: float) -> None:
            log_file.write(f"{step},{loss:.6f}\n")
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if step % args.checkpoint_every == 0 or step == options.steps:
                log_file.flush()
                training.save_checkpoint(state, checkpoint)

        training.train(state, images, linear_schedule(), options, on_step=on_step)
    bar.close()
    training.save_checkpoint(state, checkpoint)
    training.export_ema(state, args.out / "ema.safetensors", {"arch": args.arch})
    print(f"done at step {state.step}: {args.out / 'ema.safetensors'}")
    return 0
