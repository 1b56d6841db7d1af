"""The shared task spec and job-record layout (contract/): parsing, geometry, the rules it mirrors
from the library (time travel, exact chains), and the atomic status change on a real Redis."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from redis import Redis

from contract.jobs import (
    JOBS_COUNTER_KEY,
    RUNNING_KEY,
    JobRecord,
    Status,
    job_key,
    transition,
)
from contract.settings import Settings
from contract.spec import BLUR_SIGMA_Y, QUANTIZATION_SIGMA_Y, TaskSpec
from ddnm.schedules import check_travel
from pipeline.tasks import chain_operator

OLD_PHOTO = {
    "degradations": [
        {"op": "inpaint"},
        {"op": "grayscale"},
        {"op": "downsample", "factor": 4, "filter": "box"},
    ]
}


def spec(*degradations: dict, **settings: object) -> TaskSpec:
    return TaskSpec.model_validate({"degradations": list(degradations), **settings})


def test_issue_example_parses_with_paper_defaults() -> None:
    example = {
        **OLD_PHOTO,
        "sigma_y": 0.0,
        "steps": 100,
        "eta": 0.85,
        "travel": {"length": 1, "repeat": 1},
        "seed": None,
        "model": "ddnm-small",
        "class_label": None,
        "guidance_scale": 0.0,
    }
    parsed = TaskSpec.model_validate_json(json.dumps(example))
    assert [d.op for d in parsed.degradations] == ["inpaint", "grayscale", "downsample"]
    defaults = TaskSpec.model_validate(OLD_PHOTO)
    assert (defaults.steps, defaults.eta, defaults.sigma_y) == (100, 0.85, QUANTIZATION_SIGMA_Y)
    assert defaults.travel.length == defaults.travel.repeat == 1
    assert defaults.clip_x0 and defaults.samples == 1
    assert not defaults.evaluate


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"degradations": [{"op": "sharpen"}]}, "does not match any of the expected tags"),
        ({"degradations": []}, "at least 1 item"),
        ({**OLD_PHOTO, "steps": 0}, "greater than or equal to 1"),
        ({**OLD_PHOTO, "steps": 1001}, "less than or equal to 1000"),
        ({**OLD_PHOTO, "eta": 1.5}, "less than or equal to 1"),
        ({**OLD_PHOTO, "samples": 0}, "greater than or equal to 1"),
        ({**OLD_PHOTO, "samples": 17}, "less than or equal to 16"),
        ({**OLD_PHOTO, "clip_x0": "maybe"}, "valid boolean"),
        ({**OLD_PHOTO, "sigma_y": -0.1}, "greater than or equal to 0"),
        ({**OLD_PHOTO, "stepz": 10}, "Extra inputs are not permitted"),
        ({"degradations": [{"op": "downsample", "factor": 1}]}, "greater than or equal to 2"),
        ({"degradations": [{"op": "blur", "size": 4}]}, "blur size must be odd"),
        ({"degradations": [{"op": "cs", "ratio": 0.5}]}, '"evaluate": true'),
        (
            {"degradations": [{"op": "cs", "ratio": 0.5}, {"op": "grayscale"}], "evaluate": True},
            "cs must be the last",
        ),
        ({"degradations": [{"op": "grayscale"}, {"op": "grayscale"}]}, "grayscale may appear once"),
        (
            {
                "degradations": [
                    {"op": "downsample", "factor": 2, "filter": "bicubic"},
                    {"op": "inpaint"},
                ]
            },
            "no exact pseudo-inverse",
        ),
        ({**OLD_PHOTO, "guidance_scale": 1.0}, "needs a class_label"),
        ({**OLD_PHOTO, "steps": 10, "travel": {"length": 10, "repeat": 2}}, "travel.length"),
    ],
)
def test_bad_specs_are_refused_with_the_reason(bad: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TaskSpec.model_validate(bad)


def test_geometry_of_the_old_photo_chain() -> None:
    s = TaskSpec.model_validate(OLD_PHOTO)
    assert s.y_shape((3, 64, 48)) == (1, 16, 12)
    assert s.upload_shape((3, 64, 48)) == (1, 16, 12)
    assert s.mask_size((3, 64, 48)) == (64, 48)
    assert s.has_mask


def test_evaluate_mode_uploads_the_clean_image() -> None:
    s = spec({"op": "downsample", "factor": 4}, evaluate=True)
    assert s.upload_shape((3, 32, 32)) == (3, 32, 32)


def test_mask_size_is_where_inpaint_acts() -> None:
    s = spec({"op": "downsample", "factor": 2}, {"op": "inpaint"})
    assert s.mask_size((3, 32, 32)) == (16, 16)
    assert spec({"op": "grayscale"}).mask_size((3, 32, 32)) is None


@pytest.mark.parametrize(
    ("degradation", "x_shape", "message"),
    [
        ({"op": "downsample", "factor": 3}, (3, 32, 32), "factor 3 does not divide"),
        ({"op": "cs", "ratio": 0.5, "kind": "walsh_hadamard"}, (3, 24, 32), "power of two"),
        ({"op": "cs", "ratio": 0.5, "kind": "block", "block_size": 16}, (3, 24, 32), "divide"),
        ({"op": "cs", "ratio": 0.0001}, (3, 32, 32), "keeps no coefficient"),
    ],
)
def test_sizes_an_op_cannot_take(degradation: dict, x_shape: tuple, message: str) -> None:
    s = spec(degradation, evaluate=True)
    with pytest.raises(ValueError, match=message):
        s.y_shape(x_shape)


def test_travel_rule_matches_the_schedules() -> None:
    for steps, length, repeat in itertools.product((1, 2, 5, 10), (1, 2, 5, 9, 10), (1, 2, 3)):
        try:
            check_travel(steps, length, repeat)
            library_ok = True
        except ValueError:
            library_ok = False
        try:
            spec({"op": "denoise"}, steps=steps, travel={"length": length, "repeat": repeat})
            contract_ok = True
        except ValidationError:
            contract_ok = False
        assert contract_ok == library_ok, (steps, length, repeat)


CHAIN_OPS = [
    {"op": "downsample", "factor": 2, "filter": "box"},
    {"op": "downsample", "factor": 2, "filter": "bicubic"},
    {"op": "blur", "kernel": "gaussian", "sigma": 1.0},
    {"op": "grayscale"},
    {"op": "inpaint"},
    {"op": "denoise"},
]


@pytest.mark.parametrize("length", [2, 3])
def test_exact_chain_rule_matches_compose(length: int) -> None:
    """The contract admits exactly the chains for which ddnm.operators.compose knows an exact
    pseudo-inverse (built the way the worker builds them)."""
    mask = torch.ones(1, 1, 8, 8)
    mask[..., 2:5, 3:6] = 0
    checked = 0
    for chain in itertools.product(CHAIN_OPS, repeat=length):
        ops = [d["op"] for d in chain]
        if ops.count("inpaint") > 1 or ops.count("grayscale") > 1:
            continue  # refused for other reasons (one mask, one grayscale)
        try:
            spec(*chain)
            admitted = True
        except ValidationError as err:
            assert "no exact pseudo-inverse" in str(err)
            admitted = False
        unchecked = TaskSpec.model_construct(
            degradations=[spec(d).degradations[0] for d in chain], seed=0
        )
        size = unchecked.mask_size((3, 32, 32))
        m = None if size is None else torch.nn.functional.interpolate(mask, size)[0, 0]
        assert chain_operator(unchecked, (3, 32, 32), m).exact_pinv == admitted, ops
        checked += 1
    assert checked > 10


def test_job_record_round_trips_through_redis_fields() -> None:
    record = JobRecord(
        status=Status.RUNNING,
        created_at=1.5,
        spec="{}",
        model="m",
        seed=7,
        upload_sha256="ab",
        step=3,
        total=10,
        consistency=1e-6,
    )
    fields = {k.encode(): v.encode() for k, v in record.to_redis().items()}
    assert JobRecord.from_redis(fields) == record
    assert "error" not in record.to_redis()


def test_settings_refuse_a_visibility_timeout_shorter_than_jobs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DDNM_JOB_TIME_LIMIT_S", "100")
    monkeypatch.setenv("DDNM_VISIBILITY_TIMEOUT_S", "50")
    with pytest.raises(ValidationError, match="DDNM_VISIBILITY_TIMEOUT_S"):
        Settings()
    monkeypatch.setenv("DDNM_VISIBILITY_TIMEOUT_S", "150")
    assert Settings().visibility_timeout_s == 150
    monkeypatch.setenv("DDNM_MODEL_FILE", "weights.pt")
    with pytest.raises(ValidationError, match="DDNM_MODEL_CONFIG_FILE"):
        Settings()


def test_transition_is_conditional_and_records_an_event(redis: Redis) -> None:
    redis.hset(job_key("j1"), mapping={"status": "queued"})
    redis.set(job_key("j1", "image"), b"png")
    applied, previous = transition(redis, "j1", Status.RUNNING, (Status.QUEUED,), worker="w")
    assert (applied, previous) == (1, b"queued")
    assert redis.hget(job_key("j1"), "worker") == b"w"
    # not allowed from running: nothing changes, the current status is returned
    applied, current = transition(redis, "j1", Status.CANCELED, (Status.QUEUED,))
    assert (applied, current) == (0, b"running")
    assert redis.hget(job_key("j1"), "status") == b"running"
    # a guard that does not hold: nothing changes
    applied, _ = transition(redis, "j1", Status.SUCCEEDED, (Status.RUNNING,), guard={"worker": "v"})
    assert applied == 0
    applied, _ = transition(
        redis,
        "j1",
        Status.SUCCEEDED,
        (Status.RUNNING,),
        ttl_s=60,
        guard={"worker": "w"},
        result=b"r",
    )
    assert applied == 1
    for key in (job_key("j1"), job_key("j1", "result")):
        assert 0 < redis.ttl(key) <= 60
    assert redis.get(job_key("j1", "result")) == b"r"
    # uploads and the event stream go as the job ends; its status events stay, in its record
    assert not redis.exists(job_key("j1", "image")) and not redis.exists(job_key("j1", "events"))
    history = json.loads(redis.hget(job_key("j1"), "history"))
    assert [json.loads(data)["status"] for _, data in history] == ["running", "succeeded"]
    counts = redis.hgetall(JOBS_COUNTER_KEY)
    assert counts[b"running"] == b"1" and counts[b"succeeded"] == b"1"
    # a job that does not exist
    assert transition(redis, "nope", Status.RUNNING, (Status.QUEUED,)) == [0, b""]


def test_the_running_list_of_a_model_holds_the_jobs_running_on_it(redis: Redis) -> None:
    """What the autoscaler reads beside the queue: a job is in running:{model} exactly while its
    status is running, also when a worker claims it again or hands it back."""
    running = RUNNING_KEY.format("m")
    for job in ("a", "b"):
        redis.hset(job_key(job), mapping={"status": "queued", "model": "m"})
        transition(redis, job, Status.RUNNING, (Status.QUEUED,))
    assert redis.lrange(running, 0, -1) == [b"a", b"b"]
    transition(redis, "a", Status.RUNNING, (Status.RUNNING,))  # claimed again: listed once
    assert sorted(redis.lrange(running, 0, -1)) == [b"a", b"b"]
    transition(redis, "a", Status.QUEUED, (Status.RUNNING,))  # handed back
    assert redis.lrange(running, 0, -1) == [b"b"]
    transition(redis, "b", Status.FAILED, (Status.RUNNING,), ttl_s=60, error="x")
    assert redis.llen(running) == 0
    transition(redis, "a", Status.CANCELED, (Status.QUEUED,))
    assert redis.llen(running) == 0


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(DDNM_[A-Z_]+)` \|", section, re.MULTILINE))
    assert documented == {f"DDNM_{name.upper()}" for name in Settings.model_fields}


def test_the_restored_size_follows_from_the_upload() -> None:
    """x_shape inverts upload_shape: the observation times the downsampling factors, or the
    upload itself in evaluate mode; a size the chain cannot take is refused."""
    old_photo = TaskSpec.model_validate(
        {
            "degradations": [
                {"op": "inpaint"},
                {"op": "grayscale"},
                {"op": "downsample", "factor": 2},
                {"op": "downsample", "factor": 4},
            ]
        }
    )
    assert old_photo.x_shape((8, 12)) == (3, 64, 96)
    assert old_photo.upload_shape(old_photo.x_shape((8, 12))) == (1, 8, 12)
    evaluate = old_photo.model_copy(update={"evaluate": True})
    assert evaluate.x_shape((64, 96)) == (3, 64, 96)
    with pytest.raises(ValueError, match="does not divide"):
        evaluate.x_shape((60, 96))


def test_sigma_y_defaults_to_the_noise_an_upload_carries() -> None:
    """Not given: 0 in evaluate mode (noise-free measurement), the blur default for chains with a
    blur, the 8-bit rounding noise 1 / (255 sqrt 12) otherwise; given (0 included): kept, and
    written into the spec either way."""
    sr = {"degradations": [{"op": "downsample", "factor": 4}]}
    blur = {"degradations": [{"op": "blur"}, {"op": "downsample", "factor": 2}]}
    assert TaskSpec.model_validate(sr).sigma_y == pytest.approx(0.0011320593513522075)
    assert TaskSpec.model_validate(blur).sigma_y == BLUR_SIGMA_Y == 0.01
    assert TaskSpec.model_validate({**blur, "evaluate": True}).sigma_y == 0.0
    assert TaskSpec.model_validate({**blur, "sigma_y": 0}).sigma_y == 0.0
    assert TaskSpec.model_validate({**sr, "sigma_y": None}).sigma_y == QUANTIZATION_SIGMA_Y
    dumped = json.loads(TaskSpec.model_validate(sr).model_dump_json())
    assert dumped["sigma_y"] == QUANTIZATION_SIGMA_Y
