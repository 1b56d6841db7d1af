"""The worker's scheduler thread (`worker.scheduler`): job threads follow their runs, which share
forwards; progress reaches each job's own thread; a job that stops leaves the others as they
would be alone."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import pytest
import torch

from contract.spec import TaskSpec
from ddnm.sampling import StepInfo, finish
from pipeline.job import prepare
from pipeline.models import ServedModel
from tests.test_batcher import JOBS, guided_model
from worker.scheduler import Scheduler


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return guided_model()


def follow_in_threads(
    scheduler: Scheduler, model: ServedModel, stop_at: dict[int, int]
) -> tuple[dict[int, object], dict[int, set[str]]]:
    """Each job of JOBS followed from its own thread; job k's on_step raises at step
    stop_at[k]. Returns each job's outcome and the threads its on_step ran on."""
    outcomes: dict[int, object] = {}
    threads: dict[int, set[str]] = {k: set() for k in range(len(JOBS))}

    def job_thread(k: int) -> None:
        spec, image = JOBS[k]
        steps: queue.SimpleQueue[StepInfo] = queue.SimpleQueue()
        job = prepare(model, TaskSpec.model_validate(spec), image, None, steps.put)

        def on_step(info: StepInfo) -> None:
            threads[k].add(threading.current_thread().name)
            if info.step == stop_at.get(k):
                raise KeyboardInterrupt(f"job {k} canceled")  # not an Exception: any raise stops

        try:
            outcomes[k] = scheduler.follow(job.run, 0, steps, on_step)
        except BaseException as err:
            outcomes[k] = err

    workers = [threading.Thread(target=job_thread, args=(k,), name=f"job{k}") for k in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return outcomes, threads


@pytest.fixture
def scheduler(model: ServedModel) -> Iterator[Scheduler]:
    s = Scheduler(max_samples=64, eps=model.eps)
    s.start()
    yield s
    s.stop()


def test_held_jobs_share_forwards_and_get_their_results_alone(
    scheduler: Scheduler,
    model: ServedModel,
) -> None:
    alone = [
        finish(prepare(model, TaskSpec.model_validate(s), i, None).run, model.eps) for s, i in JOBS
    ]
    outcomes, threads = follow_in_threads(scheduler, model, {})
    for k, x in enumerate(alone):
        assert torch.allclose(outcomes[k], x, atol=1e-5, rtol=0)  # type: ignore[arg-type]
        assert threads[k] == {f"job{k}"}  # progress handled on the job's thread, not the model's
    forwards_alone = sum(TaskSpec.model_validate(s).steps for s, _ in JOBS)
    assert scheduler.batcher.rounds < forwards_alone


def test_a_job_that_stops_leaves_its_batch_mates_untouched(
    scheduler: Scheduler,
    model: ServedModel,
) -> None:
    spec, image = JOBS[2]
    expected = finish(prepare(model, TaskSpec.model_validate(spec), image, None).run, model.eps)
    outcomes, _ = follow_in_threads(scheduler, model, {0: 4, 1: 2})
    assert isinstance(outcomes[0], KeyboardInterrupt) and isinstance(outcomes[1], KeyboardInterrupt)
    assert torch.allclose(outcomes[2], expected, atol=1e-5, rtol=0)  # type: ignore[arg-type]
    assert not scheduler.batcher.live  # the stopped runs were dropped
