"""Continuous batching (`ddnm.sampling.Batcher`): jobs joining at any step share forwards and get
the results they get alone; priority and fair share when a batch is full; a run that raises, a
forward that fails and a dropped run leave their batch-mates untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from contract.jobs import ModelInfo
from contract.spec import TaskSpec
from ddnm.sampling import Batcher, EpsModel, NetCall, Run, finish
from ddnm.schedules import linear_schedule
from pipeline.job import Job, encode_png, prepare
from pipeline.models import ServedModel, served
from tests.conftest import fixture_network
from tests.data import record_closed_loop as recorded


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return guided_model()


def guided_model() -> ServedModel:
    """The guided 32 x 32 fixture with its classifier, as a worker serves it."""
    info = ModelInfo(name="guided", checkpoint_sha256="0" * 64, image_size=32, classifier=True)
    schedule = linear_schedule()
    network, classifier = fixture_network("guided_small"), recorded.small_classifier()
    return served(info, network, classifier, schedule, torch.device("cpu"))


def upload(height: int, width: int, factor: int = 1) -> bytes:
    photo = torch.from_numpy(
        data.astronaut()[: height * factor : factor, : width * factor : factor]
    )
    return encode_png(photo.permute(2, 0, 1)[None].float() / 127.5 - 1)[0]


JOBS = [
    ({"degradations": [{"op": "downsample", "factor": 4}], "steps": 12, "seed": 1,
      "class_label": 3, "guidance_scale": 2.0}, upload(8, 8, 8)),  # guided
    ({"degradations": [{"op": "grayscale"}], "steps": 9, "seed": 2}, upload(40, 56)),  # tiled
    ({"degradations": [{"op": "downsample", "factor": 2}], "steps": 10, "seed": 3, "samples": 2,
      "travel": {"length": 2, "repeat": 2}}, upload(16, 16, 4)),  # two draws, time travel
]  # fmt: skip


def jobs(model: ServedModel) -> list[Job]:
    return [prepare(model, TaskSpec.model_validate(s), image, None) for s, image in JOBS]


class Counting:
    """The ε-model, counting forwards and their samples."""

    def __init__(self, eps: EpsModel) -> None:
        self.eps, self.batches = eps, []

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **kw: torch.Tensor) -> torch.Tensor:
        self.batches.append(x_t.shape[0])
        return self.eps(x_t, t, **kw)


def run_all(batcher: Batcher, model: EpsModel, runs: list[Run], join_after: list[int]) -> list:
    """Runs added to `batcher` after join_after[k] forwards, driven to their ends."""
    outcomes: dict[int, object] = {}
    handles: list[int] = []
    while len(outcomes) < len(runs):
        while len(handles) < len(runs) and batcher.rounds >= join_after[len(handles)]:
            handle, ended = batcher.add(runs[len(handles)])
            handles.append(handle)
            if ended is not None:
                outcomes[handle] = ended
        if batcher.live:
            outcomes |= batcher.step(model)
    return [outcomes[h] for h in handles]


def test_jobs_batched_at_any_step_get_the_results_they_get_alone(model: ServedModel) -> None:
    alone_model = Counting(model.eps)
    alone = [finish(job.run, alone_model) for job in jobs(model)]
    together_model = Counting(model.eps)
    together = run_all(Batcher(64), together_model, [j.run for j in jobs(model)], [0, 3, 5])
    for x_alone, x_together in zip(alone, together, strict=True):
        assert x_together.shape == x_alone.shape
        assert torch.allclose(x_together, x_alone, atol=1e-5, rtol=0), (
            (x_together - x_alone).abs().max()
        )
    # fewer, larger forwards: the jobs shared them
    assert sum(together_model.batches) == sum(alone_model.batches)
    assert len(together_model.batches) < len(alone_model.batches) * 0.7
    # and the images are the same
    for job, x_alone, x_together in zip(jobs(model), alone, together, strict=True):
        assert (
            np.abs(job.finish(x_alone).image.astype(int) - job.finish(x_together).image).max() <= 1
        )


def test_one_sample_per_forward_disables_batching(model: ServedModel) -> None:
    counting = Counting(model.eps)
    specs = [{"degradations": [{"op": "grayscale"}], "steps": 4, "seed": s} for s in (1, 2)]
    runs = [prepare(model, TaskSpec.model_validate(s), upload(32, 32), None).run for s in specs]
    run_all(Batcher(1), counting, runs, [0, 0])
    assert counting.batches == [1] * 8


def fake_run(label: str, steps: int, log: list[str]) -> Run:
    """A run of `steps` requests of one sample that logs when it is served."""
    x = torch.zeros(1, 3, 4, 4)
    for _ in range(steps):
        yield NetCall(x, torch.zeros(1))
        log.append(label)
    return x


def test_priority_first_then_least_recently_served() -> None:
    log: list[str] = []
    batcher = Batcher(2)
    batcher.add(fake_run("low-a", 4, log), priority=0)
    batcher.add(fake_run("low-b", 4, log), priority=0)
    batcher.add(fake_run("high", 4, log), priority=5)
    for _ in range(4):
        batcher.step(lambda x, t: torch.zeros_like(x))
    rounds = [log[2 * k : 2 * k + 2] for k in range(4)]
    assert all(r[0] == "high" for r in rounds)  # in every full batch
    assert [r[1] for r in rounds] == ["low-a", "low-b", "low-a", "low-b"]  # in turn


def test_a_failing_run_a_failing_forward_and_a_dropped_run_leave_the_others(
    model: ServedModel,
) -> None:
    spec = TaskSpec.model_validate(JOBS[0][0])
    healthy = prepare(model, spec, JOBS[0][1], None)
    expected = finish(prepare(model, spec, JOBS[0][1], None).run, model.eps)

    def raises_after(k: int) -> Run:
        run = prepare(model, spec, JOBS[0][1], None).run
        call = next(run)
        for _ in range(k):
            call = run.send((yield call))
        raise RuntimeError("this job's own arithmetic failed")

    def bad_label() -> Run:
        """A request the ε-model refuses (label past the classifier's 1000 classes): the shared
        forward fails, and is retried request by request."""
        x = torch.zeros(1, 3, 32, 32)
        yield NetCall(x, torch.zeros(1), labels=torch.tensor([5000]), scales=torch.tensor([1.0]))
        return x

    batcher = Batcher(64)
    handles = [batcher.add(r)[0] for r in (healthy.run, raises_after(3), bad_label())]
    dropped, _ = batcher.add(prepare(model, spec, JOBS[0][1], None).run)
    outcomes: dict[int, object] = {}
    while batcher.live:
        outcomes |= batcher.step(model.eps)
        if batcher.rounds == 2:
            batcher.drop(dropped)
    assert isinstance(outcomes[handles[1]], RuntimeError)
    assert dropped not in outcomes
    assert torch.allclose(outcomes[handles[0]], expected, atol=1e-5, rtol=0)
    assert isinstance(outcomes[handles[2]], ValueError) and "class_label" in str(
        outcomes[handles[2]]
    )
