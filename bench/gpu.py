"""GPU throughput of the sampler with the official 256 x 256 ImageNet UNet (random weights): DDNM
4x SR runs of B images at once (one `Batcher` forward per step), images/s for each B, with and
without torch.compile, beside the chip's dense bf16 matmul ceiling, and the fraction of it the
network's forwards reach (their FLOPs counted by torch's FlopCounterMode).

    bench/gpu.sh                                  # on a GPU machine: the whole table, < 8 min
    PYTHONPATH=. python bench/gpu.py --smoke --device cpu   # the same code, tiny, on a CPU
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddnm import operators as O
from ddnm.models import as_denoiser, load_network
from ddnm.models.accelerate import Autocast, accelerate
from ddnm.models.registry import get_entry
from ddnm.sampling import Batcher, EpsModel, SamplerOptions, run
from ddnm.schedules import linear_schedule


def network(name: str, device: torch.device, compiled: bool) -> EpsModel:
    entry = get_entry(name)
    net = load_network(None, arch=entry.arch, config=entry.config).to(device).eval()
    mode = "max-autotune-no-cudagraphs" if compiled and device.type == "cuda" else "default"
    accelerate(net, device.type == "cuda", mode if compiled else "off")  # type: ignore[arg-type]
    return Autocast(as_denoiser(net), torch.bfloat16, device.type)


def images_per_s(eps: EpsModel, size: int, batch: int, steps: int, device: torch.device) -> float:
    """B independent DDNM runs (4x SR of random images) stepped together; images per second."""
    A, schedule = O.SuperResolution(4), linear_schedule()
    generator = torch.Generator(device).manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=generator, device=device) * 2 - 1
    options = SamplerOptions(steps=steps, eta=0.85)
    batcher = Batcher(batch)
    for k in range(batch):
        g = torch.Generator(device).manual_seed(k)
        batcher.add(run(schedule, A, A.A(x[k : k + 1]), options, generator=g))
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        while batcher.live:
            batcher.step(eps)
    _sync(device)
    return batch / (time.perf_counter() - start)


def matmul_ceiling(device: torch.device, n: int) -> float:
    """Dense bf16 matmul TFLOP/s of this chip (n x n x n, median of 10)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    times = []
    for _ in range(12):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / sorted(times[2:])[len(times[2:]) // 2] / 1e12


def flops_per_image_step(eps: EpsModel, size: int, device: torch.device) -> float:
    x, t = torch.zeros(1, 3, size, size, device=device), torch.full((1,), 500.0, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        eps(x, t)
    return float(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop adding rows after")
    parser.add_argument("--smoke", action="store_true", help="the default 32x32 model, 2 steps")
    args = parser.parse_args()
    device, started = torch.device(args.device), time.monotonic()
    name, size = ("ddnm-small-32", 32) if args.smoke else ("imagenet-256-uncond", 256)
    steps = 2 if args.smoke else args.steps
    batches = [1, 2] if args.smoke else args.batches
    ceiling = matmul_ceiling(device, 1024 if args.smoke else 8192)
    flops = flops_per_image_step(network(name, device, compiled=False), size, device)
    print(f"{name} ({size}x{size}), {steps} steps, bf16 autocast, {device}: "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}")  # fmt: skip
    print(f"dense bf16 matmul ceiling: {ceiling:.1f} TFLOP/s; network: {flops / 1e9:.1f} GFLOP "
          "per image and step\n")  # fmt: skip
    print("| compile | batch | images/s | network TFLOP/s | of the ceiling |")
    print("|---|---:|---:|---:|---:|")
    for compiled in (False,) if args.smoke else (False, True):
        eps = network(name, device, compiled)
        images_per_s(eps, size, 1, 2, device)  # warm-up (and compilation)
        for batch in batches:
            if time.monotonic() - started > args.budget_s:
                print(f"| {compiled} | {batch} | (time budget spent) | | |")
                continue
            if compiled:
                images_per_s(eps, size, batch, 2, device)  # this shape's compilation
            rate = images_per_s(eps, size, batch, steps, device)
            achieved = rate * steps * flops / 1e12
            print(f"| {'on' if compiled else 'off'} | {batch} | {rate:.2f} | {achieved:.3g} | "
                  f"{100 * achieved / ceiling:.0f} % |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
