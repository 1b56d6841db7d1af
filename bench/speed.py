"""Sampler speed: where the time of one DDNM / DDNM+ step goes, measured side by side.

For each operator the range-space correction of DDNM (Alg. 1) and of DDNM+ (Eq. 17-19, SVD form,
with the noise shaping) is timed against one forward of the project's default network at the same
batch, and the ratio is reported; half-precision forwards are timed against float32 in the same
run. Timings interleave the candidates and take medians, so the ratios are comparable even on a
busy machine; absolute times are indicative only.

    .venv/bin/python bench/speed.py [--size 32] [--batch 4] [--repeats 15] [--threads 1] [--half]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from ddnm import operators as O
from ddnm.models import load_network
from ddnm.models.registry import get_entry
from ddnm.sampling import steps as S


def operators(size: int) -> dict[str, O.LinearOperator]:
    mask = (torch.rand(size, size, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    return {
        "sr_box_x4": O.SuperResolution(4),
        "sr_bicubic_x4": O.SuperResolution(4, filter="bicubic"),
        "deblur_gaussian": O.Deblur(O.gaussian_kernel(2.0)),
        "colorization": O.Colorization(),
        "inpainting": O.Inpainting(mask),
        "cs_walsh_hadamard_25": O.CompressedSensing(0.25, image_size=size),
        "old_photo": O.compose(O.Inpainting(mask), O.Colorization(), O.SuperResolution(4)),
    }


def median_times(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call, candidates interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():
        fn()  # warm-up (caches, allocator)
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--half", action="store_true", help="also time a bfloat16 torso")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    entry = get_entry("ddnm-small-32")
    config = dict(entry.config, image_size=args.size)
    net = load_network(None, arch=entry.arch, config=config)
    x = torch.randn(args.batch, 3, args.size, args.size)
    t = torch.full((args.batch,), 500.0)
    a_t, sigma_t = torch.tensor(0.8), torch.tensor(0.6)

    candidates: dict[str, Callable[[], object]] = {}
    with torch.no_grad():
        candidates["forward float32"] = lambda: net(x, t)
        if args.half:
            half = load_network(None, arch=entry.arch, config=config)
            half.convert_torso(torch.bfloat16)
            candidates["forward bfloat16 torso"] = lambda: half(x, t)
        for name, op in operators(args.size).items():
            y = op.A(x)
            candidates[f"{name} DDNM"] = lambda op=op, y=y: S.rectify_x0(op, x, y)
            candidates[f"{name} DDNM+"] = lambda op=op, y=y: S.shape_noise(
                op, x, sigma_t, S.rectify_x0_plus(op, x, y, a_t, sigma_t, 0.1)[1]
            )
        medians = median_times(candidates, args.repeats)

    base = medians["forward float32"]
    print(
        f"size {args.size}, batch {args.batch}, threads {args.threads}, "
        f"repeats {args.repeats}, torch {torch.__version__}\n"
    )
    print("| step part | median ms | ratio to float32 forward |\n|---|---:|---:|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds * 1e3:.2f} | {seconds / base:.3f} |")


if __name__ == "__main__":
    main()
