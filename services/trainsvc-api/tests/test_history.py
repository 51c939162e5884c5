"""MetricHistory: bounded, spanning the whole run, newest point always present."""

from __future__ import annotations

import itertools

import pytest

from trainsvc_api.history import MetricHistory


def test_a_long_run_is_kept_from_its_first_step_to_its_newest_in_bounded_memory() -> None:
    history = MetricHistory(100)
    for step in range(1, 100_001):
        history.add(step, {"loss": 1.0 / step})
        assert len(history) <= 101
    steps = [s for s, _ in history.points()]
    assert steps[0] == 1
    assert steps[-1] == 100_000
    assert len(steps) >= 50  # halving keeps at least half the capacity
    gaps = {b - a for a, b in itertools.pairwise(steps[:-1])}
    assert len(gaps) == 1  # evenly thinned (the newest point aside)


def test_the_same_step_replaces_and_an_earlier_step_forgets_what_followed() -> None:
    history = MetricHistory(10)
    for step in range(1, 8):
        history.add(step, {"loss": float(step)})
    history.add(7, {"loss": 70.0})
    assert history.points()[-1] == (7, {"loss": 70.0})
    history.add(4, {"loss": 40.0})  # resumed from the checkpoint of step 4
    assert [s for s, _ in history.points()] == [1, 2, 3, 4]
    assert history.points()[-1][1] == {"loss": 40.0}


def test_capacity_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        MetricHistory(1)
