"""Sampler overhead: time per step outside the network, as a fraction of the network's, at batch 1
and at the largest batch, for the default model (32 x 32) and the 256 x 256 ImageNet UNet (random
weights). B independent DDNM 4x SR runs step together through one `Batcher`; the network's own
time is measured inside the ε-model, the rest of the loop (each run's range-space correction
and DDIM step, the batcher's join and split) is the overhead.

    PYTHONPATH=. .venv/bin/python bench/overhead.py [--steps 20] [--steps-256 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from ddnm import operators as O
from ddnm.models import as_denoiser, load_network
from ddnm.models.registry import get_entry
from ddnm.sampling import Batcher, EpsModel, SamplerOptions, run
from ddnm.schedules import linear_schedule


class Timed:
    def __init__(self, eps: EpsModel) -> None:
        self.eps, self.seconds = eps, 0.0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **kw: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.eps(x_t, t, **kw)
        self.seconds += time.perf_counter() - start
        return out


def overhead(name: str, batch: int, steps: int) -> tuple[float, float]:
    """(network ms per step, overhead / network) of B runs stepped together."""
    entry = get_entry(name)
    size = entry.image_size
    eps = Timed(as_denoiser(load_network(None, arch=entry.arch, config=entry.config).eval()))
    A, schedule = O.SuperResolution(4), linear_schedule()
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batcher = Batcher(batch)
    for k in range(batch):
        g = torch.Generator().manual_seed(k)
        batcher.add(run(schedule, A, A.A(x[k : k + 1]), SamplerOptions(steps=steps), generator=g))
    with torch.no_grad():
        batcher.step(eps)  # warm-up
        eps.seconds = 0.0
        start, rounds = time.perf_counter(), 0
        while batcher.live:
            batcher.step(eps)
            rounds += 1
    total = time.perf_counter() - start
    return 1000 * eps.seconds / rounds, (total - eps.seconds) / eps.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--steps-256", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batch-256", type=int, default=4)
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} torch threads, torch {torch.__version__}\n")
    print("| model | batch | network per step (ms) | overhead / network |")
    print("|---|---:|---:|---:|")
    for name, batches, steps in (
        ("ddnm-small-32", (1, args.batch), args.steps),
        ("imagenet-256-uncond", (1, args.batch_256), args.steps_256),
    ):
        for batch in batches:
            net_ms, ratio = overhead(name, batch, steps)
            print(f"| {name} | {batch} | {net_ms:.1f} | {100 * ratio:.1f} % |", flush=True)


if __name__ == "__main__":
    main()
