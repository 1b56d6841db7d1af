"""Schedules and timestep sequences against the reference tables (schedules.json)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddnm.schedules import linear_schedule, timestep_pairs


@pytest.fixture(scope="module")
def tables(reference_dir):
    return json.loads((reference_dir / "schedules.json").read_text())


def test_betas_equal_reference(tables):
    np.testing.assert_array_equal(linear_schedule().betas.numpy(), tables["betas_float64"])


def test_alpha_bar_table_is_bit_identical(tables):
    """The sampler's float32 table, entry k = alpha_bar(k - 1), entry 0 = 1 exactly."""
    table = np.asarray(tables["alpha_bar_table_float32"]["values"], dtype=np.float32)
    ours = linear_schedule().alpha_bar_table.numpy()
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, table)
    assert linear_schedule().alpha_bar(-1) == 1.0


def test_alpha_bar_table_per_dtype(tables):
    """float64 runs use the float64 cumulative product (the reference's float64 re-runs), any
    other dtype the float32 table."""
    schedule = linear_schedule()
    f64 = schedule.alpha_bar_table_for(torch.float64).numpy()
    assert f64[0] == 1.0
    np.testing.assert_array_equal(f64[1:], tables["alphas_cumprod_float64"])
    assert torch.equal(schedule.alpha_bar_table_for(torch.float32), schedule.alpha_bar_table)
    assert not np.array_equal(f64, schedule.alpha_bar_table.double().numpy())


def test_alpha_bar_example_from_readme():
    assert linear_schedule().alpha_bar(900) == pytest.approx(2.702444908209145e-4, abs=0, rel=1e-12)


@pytest.mark.parametrize("steps", [10, 20, 50, 100])
def test_plain_timesteps(tables, steps):
    ref = tables["no_travel"][str(steps)]
    pairs = timestep_pairs(steps)
    assert [list(p) for p in pairs] == ref["pairs"]
    assert [t for t, _ in pairs] == ref["model_timesteps"]
    assert pairs[0][0] == (steps - 1) * (1000 // steps)
    assert pairs[-1] == (0, -1)


@pytest.mark.parametrize("key", ["100,1,1", "100,10,3", "50,5,2", "20,3,2", "10,3,2", "100,2,2"])
def test_time_travel_schedules(tables, key):
    ref = tables["time_travel"][key]
    steps, length, repeat = map(int, key.split(","))
    pairs = timestep_pairs(steps, length, repeat)
    assert [list(p) for p in pairs] == ref["pairs"]
    assert len(pairs) == ref["n_transitions"]
    assert sum(t_next < t for t, t_next in pairs) == ref["n_model_calls"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 1001}, "steps"),
        ({"steps": 10, "travel_length": 10, "travel_repeat": 2}, "travel_length"),
        ({"steps": 10, "travel_length": 0}, "travel_length"),
        ({"steps": 10, "travel_repeat": 0}, "travel_repeat"),
        ({"steps": 1, "travel_repeat": 2}, "travel_repeat must be 1 when steps = 1"),
    ],
)
def test_bad_settings_name_the_parameter(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timestep_pairs(**kwargs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 1e-4, 0.02), "num_timesteps"),
        ((10, 0.0, 0.02), "beta_start"),
        ((10, 0.03, 0.02), "beta_start <= beta_end"),
        ((10, 1e-4, 1.0), "beta_end < 1"),
    ],
)
def test_bad_schedule_parameters(args, message):
    with pytest.raises(ValueError, match=message):
        linear_schedule(*args)
