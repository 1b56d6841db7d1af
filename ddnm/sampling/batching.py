"""Drivers of sampler runs (`calls.Run`): whoever drives a run owns the network call.

    finish(run, model)   one run to its end, each request evaluated by the ε-model
    lockstep(runs)       several runs as one: each request is the batch of theirs, ε split back
    spawn(generator, k)  k child generators for k runs of one job, derived deterministically

Every reduction of a run is per sample (its own operator, y and draws), and the network sees a
sample's row whatever else is in the batch; so a run's result does not depend on the company it
keeps, up to the float rounding of a batched forward.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import cast

import torch
from torch import Tensor

from ddnm.sampling.calls import EpsModel, NetCall, Run, join

SEED_BOUND = 2**63 - 1  # child seeds are drawn from [0, SEED_BOUND)


@torch.no_grad()
def finish(run: Run, model: EpsModel) -> Tensor:
    """Drive `run` to its end with `model` evaluating every request; returns the run's result."""
    try:
        call = next(run)
        while True:
            call = run.send(call.evaluate(model))
    except StopIteration as done:
        return done.value


def lockstep(runs: Sequence[Run]) -> Generator[NetCall, Tensor, list[Tensor]]:
    """Drive `runs` as one run: each request joins the pending requests of the runs still going
    (in order; `calls.join`), and the ε sent for it is split back by batch sizes. A run that ends
    leaves the batch. Returns the runs' results in their order."""
    results: list[Tensor | None] = [None] * len(runs)
    pending = {k: call for k, r in enumerate(runs) if (call := _advance(r, None, results, k))}
    while pending:
        eps = yield join(list(pending.values()))
        parts = eps.split([c.batch for c in pending.values()])
        pending = {
            k: call
            for k, part in zip(list(pending), parts, strict=True)
            if (call := _advance(runs[k], part, results, k))
        }
    return cast(list[Tensor], results)  # every run has ended: each result is set


def _advance(run: Run, eps: Tensor | None, results: list[Tensor | None], k: int) -> NetCall | None:
    """Send `eps` to run k (start it when None): its next request, or None once it has ended
    (its result then stored in results[k])."""
    try:
        return next(run) if eps is None else run.send(eps)
    except StopIteration as done:
        results[k] = done.value
        return None


def spawn(generator: torch.Generator | None, k: int) -> list[torch.Generator]:
    """k child generators on `generator`'s device, seeded from k draws of it (of torch's
    default generator when None): the same parent state gives the same children, and child i
    depends on neither k nor how the children's runs are batched."""
    device = torch.device("cpu") if generator is None else generator.device
    seeds = torch.randint(0, SEED_BOUND, (k,), generator=generator, device=device)
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds.tolist()]
