"""DDPM training of an ε-prediction network (Ho et al. 2020, Alg. 1) on a folder of images.

Notation:
    x0           (B, 3, s, s) clean training crops in [-1, 1]
    t            (B,) int64 timesteps, uniform in {0, ..., T-1}
    eps          (B, 3, s, s) standard normal noise
    alpha_bar    alpha_bar(t) of the schedule (``Schedule.alpha_bar_table[t + 1]``)
    x_t          sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps            (DDPM Eq. 4)
    loss         || eps - eps_theta(x_t, t) ||^2, averaged               (DDPM Eq. 14, L_simple)

The trainer keeps an exponential moving average (EMA) of the weights, which is the network
that gets exported. Its decay warms up as min(ema_decay, (1 + k) / (10 + k)) at step k, so that
the random initial weights wash out of the average within a short run. All randomness (crops,
flips, t, eps) comes from one explicit `torch.Generator`; its state is part of every checkpoint,
so a resumed run continues exactly.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ddnm.imaging import load_image
from ddnm.schedules import Schedule

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
Network = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class TrainOptions:
    """Settings of one training run.

    steps:       total number of optimiser steps (a resumed run stops at the same total).
    batch_size:  crops per step.
    crop_size:   side s of the square training crops (the network's native size).
    lr:          Adam learning rate.
    ema_decay:   EMA decay per step once warmed up, in [0, 1) (see `ema_decay_at`).
    seed:        seed of the generator behind every random draw.
    """

    steps: int
    batch_size: int = 32
    crop_size: int = 32
    lr: float = 2e-4
    ema_decay: float = 0.999
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "crop_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass
class TrainState:
    """Everything a checkpoint holds: the network, its EMA, the optimiser, the step counter and
    the generator. `config` is the network's constructor config (stored alongside)."""

    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    config: dict
    step: int = 0


def new_state(model: nn.Module, config: dict, options: TrainOptions) -> TrainState:
    """A fresh training state for `model` (EMA starts as a copy of the weights)."""
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    generator = torch.Generator().manual_seed(options.seed)
    return TrainState(model, ema, optimizer, generator, dict(config))


def load_images(folder: str | Path, min_size: int) -> list[Tensor]:
    """Every image file in `folder` (sorted by name) as a (3, H, W) uint8 tensor; images smaller
    than `min_size` on either side are refused."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    images = [torch.from_numpy(load_image(p).copy()).permute(2, 0, 1) for p in paths]
    for path, image in zip(paths, images, strict=True):
        if min(image.shape[1:]) < min_size:
            raise ValueError(f"image {path.name} is smaller than the crop size {min_size}")
    return images


def random_crops(
    images: Sequence[Tensor], batch_size: int, size: int, generator: torch.Generator
) -> Tensor:
    """A batch of random size x size crops, each from a uniformly chosen image, flipped left-right
    with probability 1/2. images: (3, H, W) uint8. Returns (B, 3, size, size) in [-1, 1]."""
    crops = []
    for _ in range(batch_size):
        image = images[int(torch.randint(len(images), (1,), generator=generator))]
        top = int(torch.randint(image.shape[1] - size + 1, (1,), generator=generator))
        left = int(torch.randint(image.shape[2] - size + 1, (1,), generator=generator))
        crop = image[:, top : top + size, left : left + size]
        if bool(torch.rand((), generator=generator) < 0.5):
            crop = crop.flip(-1)
        crops.append(crop)
    return torch.stack(crops).float() / 127.5 - 1.0


def ddpm_loss(model: Network, x0: Tensor, schedule: Schedule, generator: torch.Generator) -> Tensor:
    """L_simple (DDPM Eq. 14) for one batch: draw t and eps, form x_t (Eq. 4), regress eps.
    x0: (B, 3, s, s) in [-1, 1]. Returns the scalar mean squared error."""
    t = torch.randint(schedule.num_timesteps, (x0.shape[0],), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    alpha_bar = schedule.alpha_bar_table[t + 1].view(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1.0 - alpha_bar).sqrt() * eps
    eps_theta = model(x_t, t)[:, : x0.shape[1]]
    return torch.mean((eps_theta - eps) ** 2)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter (buffers are copied)."""
    for e_param, param in zip(ema.parameters(), model.parameters(), strict=True):
        e_param.lerp_(param, 1.0 - decay)
    for e_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        e_buffer.copy_(buffer)


def ema_decay_at(ema_decay: float, step: int) -> float:
    """EMA decay used after optimiser step `step` (0-based): min(ema_decay, (1 + k) / (10 + k))."""
    return min(ema_decay, (1.0 + step) / (10.0 + step))


def train_step(
    state: TrainState, images: Sequence[Tensor], schedule: Schedule, options: TrainOptions
) -> float:
    """One optimiser step on a fresh batch of crops; returns the loss before the update."""
    state.model.train()
    x0 = random_crops(images, options.batch_size, options.crop_size, state.generator)
    loss = ddpm_loss(state.model, x0, schedule, state.generator)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    update_ema(state.ema, state.model, ema_decay_at(options.ema_decay, state.step))
    state.step += 1
    return float(loss.detach())


def save_checkpoint(state: TrainState, path: str | Path) -> None:
    """Write the full training state (atomically: a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(
        {
            "model": state.model.state_dict(),
            "ema": state.ema.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "generator": state.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "config": state.config,
            "step": state.step,
        },
        tmp,
    )
    tmp.replace(path)


def load_checkpoint(state: TrainState, path: str | Path) -> None:
    """Restore a state written by `save_checkpoint` into `state` (same network config)."""
    saved = torch.load(path, weights_only=True)
    if saved["config"] != state.config:
        raise ValueError(f"checkpoint {path} was made with config {saved['config']}")
    state.model.load_state_dict(saved["model"])
    state.ema.load_state_dict(saved["ema"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    state.step = int(saved["step"])


def export_ema(state: TrainState, path: str | Path, metadata: dict[str, str]) -> None:
    """Save the EMA weights as safetensors, with the network config and `metadata` in the header."""
    tensors = {k: v.detach().contiguous() for k, v in state.ema.state_dict().items()}
    header = {"config": json.dumps(state.config, sort_keys=True), "step": str(state.step)}
    save_file(tensors, str(path), metadata={**header, **metadata})


def train(
    state: TrainState,
    images: Sequence[Tensor],
    schedule: Schedule,
    options: TrainOptions,
    *,
    on_step: Callable[[int, float], None] | None = None,
) -> None:
    """Run `train_step` until `state.step == options.steps`; on_step(step, loss) after each."""
    while state.step < options.steps:
        loss = train_step(state, images, schedule, options)
        if on_step is not None:
            on_step(state.step, loss)
