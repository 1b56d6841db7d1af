"""Drivers of sampler runs (`calls.Run`): whoever drives a run owns the network call.

    finish(run, model)   one run to its end, each request evaluated by the ε-model
    lockstep(runs)       several runs as one: each request is the batch of theirs, ε split back
    spawn(generator, k)  k child generators for k runs of one job, derived deterministically
    Batcher(max)         continuous batching: runs of many jobs, joining and leaving at any
                         step, share forwards of up to `max` samples

Every reduction of a run is per sample (its own operator, y and draws), and the network sees a
sample's row whatever else is in the batch; so a run's result does not depend on the company it
keeps, up to the float rounding of a batched forward.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class _Live:
    """A run in a Batcher: its pending request, and when it was last served."""

    run: Run
    priority: int
    call: NetCall
    served: int  # the round it was last in a forward (its arrival round before that)


Outcome = Tensor | BaseException  # a run's result x, or what it raised


def group(call: NetCall) -> tuple[object, ...]:
    """Requests that can share one forward: same sample shape, dtype and device (labels and
    scales are per sample: `calls.join`)."""
    x_t = call.x_t
    return (tuple(x_t.shape[1:]), x_t.dtype, x_t.device)


class Batcher:
    """Continuous batching of many runs (of any jobs) into shared forwards.

    Each `step` runs one forward over pending requests of one `group`: the request of the
    highest priority, least recently served, and the others of its group in that order while
    the batch holds at most `max_samples` samples (a request larger than that runs alone). Each
    run is sent its slice of ε. A run joins at its next request (`add`) and leaves when it ends
    or is `drop`ped; runs at different steps, with different operators, y and labels, share a
    forward. A run that raises ends alone; a forward that raises is retried request by request,
    so only the request it fails on ends.
    """

    def __init__(self, max_samples: int) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.max_samples = max_samples
        self.live: dict[int, _Live] = {}
        self.rounds = 0  # forwards so far
        self.samples = 0  # samples in them (samples / rounds: the mean batch)
        self._handles = 0

    def add(self, run: Run, priority: int = 0) -> tuple[int, Outcome | None]:
        """Start `run`: its handle, and its outcome if it ended before asking anything."""
        self._handles += 1
        handle = self._handles
        try:
            call = next(run)
        except StopIteration as done:
            return handle, done.value
        except Exception as err:
            return handle, err
        self.live[handle] = _Live(run, priority, call, self.rounds)
        return handle, None

    def drop(self, handle: int) -> None:
        """End a run now (canceled); its generator is closed."""
        live = self.live.pop(handle, None)
        if live is not None:
            live.run.close()

    def step(self, model: EpsModel) -> dict[int, Outcome]:
        """One forward; the outcomes of the runs that ended in it."""
        self.rounds += 1
        batch = self._select()
        calls = [self.live[h].call for h in batch]
        self.samples += sum(c.batch for c in calls)
        try:
            parts = list(join(calls).evaluate(model).split([c.batch for c in calls]))
        except Exception as err:
            if len(batch) > 1:
                return self._one_by_one(batch, model)
            self.drop(batch[0])
            return {batch[0]: err}
        return self._send(batch, parts)

    def _select(self) -> list[int]:
        def rank(handle: int) -> tuple[int, int, int]:
            live = self.live[handle]
            return (-live.priority, live.served, handle)

        ordered = sorted(self.live, key=rank)
        key = group(self.live[ordered[0]].call)
        batch, samples = [ordered[0]], self.live[ordered[0]].call.batch
        for handle in ordered[1:]:
            call = self.live[handle].call
            if group(call) == key and samples + call.batch <= self.max_samples:
                batch.append(handle)
                samples += call.batch
        return batch

    def _one_by_one(self, batch: list[int], model: EpsModel) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        for handle in batch:
            try:
                eps = self.live[handle].call.evaluate(model)
            except Exception as err:
                self.drop(handle)
                outcomes[handle] = err
                continue
            outcomes |= self._send([handle], [eps])
        return outcomes

    def _send(self, batch: list[int], parts: list[Tensor]) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        for handle, eps in zip(batch, parts, strict=True):
            live = self.live[handle]
            try:
                self.live[handle] = replace(live, call=live.run.send(eps), served=self.rounds)
            except StopIteration as done:
                outcomes[handle] = done.value
            except Exception as err:
                outcomes[handle] = err
            else:
                continue
            del self.live[handle]
        return outcomes
