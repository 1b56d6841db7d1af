"""The mean of K draws in one batch: wall time of `samples = K` against `samples = 1`.

Side by side in one run, candidates interleaved round by round, medians taken:
    lockstep      posterior_mean: the K draws step together, one network forward at batch K
    in turn       the K draws as K runs one after another (how posterior_mean ran before)
    network       one forward of the network at batch K (the hardware's own batch gain, the
                  limit of what batching the draws can reach)
each as a ratio to its K = 1 time. Default model, native size (32 x 32), 4x super-resolution of
a real photograph, float32.

    .venv/bin/python bench/batching.py [--steps 50] [--repeats 3] [--samples 1 2 4 8]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import skimage.data
import torch
from PIL import Image

from ddnm.imaging import to_tensor
from ddnm.operators import SuperResolution
from ddnm.sampling import SamplerOptions, finish, posterior_mean, run, spawn
from pipeline.models import load_named


def photo() -> torch.Tensor:
    """(1, 3, 32, 32) in [-1, 1]: a 32 x 32 crop of the 4x reduced astronaut (held out)."""
    small = np.asarray(Image.fromarray(skimage.data.astronaut()).reduce(4))
    return to_tensor(small[20:52, 40:72])


def medians(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call, candidates interleaved round by round after one warm-up each."""
    for fn in candidates.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()

    model = load_named("ddnm-small-32", None)
    schedule, A = model.schedule, SuperResolution(4)
    y, options = A.A(photo()), SamplerOptions(steps=args.steps, eta=0.85, clip_x0=True)

    def lockstep(k: int) -> Callable[[], object]:
        g = torch.Generator().manual_seed
        return lambda: posterior_mean(model.eps, schedule, A, y, options, k, generator=g(0))

    def in_turn(k: int) -> Callable[[], object]:
        def draws() -> object:
            children = spawn(torch.Generator().manual_seed(0), k)
            return [finish(run(schedule, A, y, options, generator=c), model.eps) for c in children]

        return draws

    def network(k: int) -> Callable[[], object]:
        x, t = torch.randn(k, 3, 32, 32), torch.full((k,), 500.0)
        return lambda: model.eps(x, t)

    candidates = {
        f"{name} {k}": make(k)
        for k in args.samples
        for name, make in (("lockstep", lockstep), ("in turn", in_turn), ("network", network))
    }
    with torch.no_grad():
        seconds = medians(candidates, args.repeats)

    print(
        f"ddnm-small-32, 32 x 32, 4x SR, {args.steps} steps, {torch.get_num_threads()} threads, "
        f"{args.repeats} repeats (medians), torch {torch.__version__}\n"
    )
    print("| K | lockstep (s) | lockstep / K=1 | in turn / K=1 | network forward / K=1 |")
    print("|---:|---:|---:|---:|---:|")
    first = args.samples[0]
    for k in args.samples:
        ratio = {n: seconds[f"{n} {k}"] / seconds[f"{n} {first}"] for n in ("lockstep", "in turn")}
        net = seconds[f"network {k}"] / seconds[f"network {first}"]
        print(
            f"| {k} | {seconds[f'lockstep {k}']:.2f} | {ratio['lockstep']:.2f} | "
            f"{ratio['in turn']:.2f} | {net:.2f} |"
        )


if __name__ == "__main__":
    main()
