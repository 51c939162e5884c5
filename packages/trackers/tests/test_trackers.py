"""Tracker formulas on constructed inputs, exact round trips, bounded memory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from trainsvc_trackers import (
    ConvergenceMonitor,
    DivergenceDetector,
    EmergenceTracker,
    History,
    SpecializationTracker,
    action_coordination,
    count_roles,
    field_entropy,
    js_divergence_matrix,
    nn_ratio,
)


def roundtrip(obj):  # type: ignore[no-untyped-def]
    """to_dict -> real JSON text -> from_dict."""
    text = json.dumps(obj.to_dict(), allow_nan=False)
    return type(obj).from_dict(json.loads(text))


# ---------------------------------------------------------------- formulas


def test_nn_ratio_of_a_regular_lattice() -> None:
    # 4x4 agents every 2 cells on an 8x8 torus: every nearest neighbour is 2 away;
    # density 16/64 -> expected random distance 0.5/sqrt(0.25) = 1.
    pos = np.array([(r, c) for r in range(0, 8, 2) for c in range(0, 8, 2)])
    assert nn_ratio(pos, (8, 8)) == pytest.approx(2.0)


def test_nn_ratio_wraps_around_the_torus() -> None:
    pos = np.array([[0, 0], [0, 9]])  # 1 apart across the edge of a 10-wide torus
    expected = 0.5 / math.sqrt(2 / 100)
    assert nn_ratio(pos, (10, 10)) == pytest.approx(1.0 / expected)


def test_nn_ratio_of_stacked_agents_is_zero() -> None:
    assert nn_ratio(np.zeros((5, 2), int), (16, 16)) == 0.0


def test_field_entropy_extremes() -> None:
    assert field_entropy(np.ones((4, 4))) == pytest.approx(1.0)
    one_hot = np.zeros((4, 4))
    one_hot[1, 2] = 3.0
    assert field_entropy(one_hot) == pytest.approx(0.0)
    half = np.zeros((4, 4))
    half[:2] = 1.0  # 8 equal cells out of 16: log 8 / log 16
    assert field_entropy(half) == pytest.approx(0.75)
    assert field_entropy(np.zeros((4, 4))) == 1.0


def test_action_coordination_known_values() -> None:
    pos = np.array([[0, 0], [0, 1], [5, 5], [5, 6]])
    # Two neighbour pairs, both agree; actions 1,1,2,2 -> chance 0.5 -> kappa 1.
    assert action_coordination(pos, np.array([1, 1, 2, 2]), (10, 10), 1) == pytest.approx(1.0)
    # Both pairs disagree: p_same 0, chance 0.5 -> kappa -1.
    assert action_coordination(pos, np.array([1, 2, 2, 1]), (10, 10), 1) == pytest.approx(-1.0)
    # No neighbours within radius 0 apart from stacked agents -> 0.
    assert action_coordination(pos, np.array([1, 1, 2, 2]), (10, 10), 0) == 0.0


def test_emergence_index_combines_the_three_terms() -> None:
    tracker = EmergenceTracker((8, 8), neighbour_radius=1)
    pos = np.zeros((4, 2), int)  # all stacked: R = 0
    fld = np.zeros((8, 8))
    fld[0, 0] = 1.0  # entropy 0
    out = tracker.update(pos, fld, np.array([0, 1, 2, 3]))  # all differ: kappa = (0 - 0.25)/0.75
    assert out["nn_ratio"] == 0.0 and out["field_entropy"] == 0.0
    assert out["action_coordination"] == pytest.approx(-1 / 3)
    assert out["emergence_index"] == pytest.approx((1 + 1 + 0) / 3)


def test_emergence_batches_are_averaged() -> None:
    tracker = EmergenceTracker((8, 8))
    pos = np.stack([np.zeros((4, 2), int), np.array([(0, 0), (0, 4), (4, 0), (4, 4)])])
    fields = np.stack([np.ones((8, 8)), np.ones((8, 8))])
    out = tracker.update(pos, fields, np.zeros((2, 4), int))
    single = nn_ratio(pos[1], (8, 8))
    assert out["nn_ratio"] == pytest.approx(single / 2)


def test_jsd_and_specialization_index() -> None:
    d = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    jsd = js_divergence_matrix(d)
    assert jsd[0, 1] == pytest.approx(1.0) and jsd[0, 2] == pytest.approx(0.0)
    assert count_roles(jsd, 0.1) == 2
    tracker = SpecializationTracker(2, 2, decay=0.0, smoothing=1e-12)
    out = tracker.update(np.array([[10, 0], [0, 10]]))
    assert out["specialization_index"] == pytest.approx(1.0, abs=1e-9)
    assert out["n_roles"] == 2.0
    assert out["policy_entropy"] == pytest.approx(0.0, abs=1e-9)
    same = SpecializationTracker(3, 4, decay=0.0).update(np.full((3, 4), 5.0))
    assert same["specialization_index"] == pytest.approx(0.0, abs=1e-12)
    assert same["n_roles"] == 1.0 and same["policy_entropy"] == pytest.approx(1.0)


def test_specialization_counts_decay() -> None:
    tracker = SpecializationTracker(1, 2, decay=0.5)
    tracker.update(np.array([[4.0, 0.0]]))
    tracker.update(np.array([[0.0, 2.0]]))
    assert tracker.counts.tolist() == [[2.0, 2.0]]


def test_convergence_rolling_stats_and_stagnation() -> None:
    mon = ConvergenceMonitor(window=4, patience=3)
    for v in [1.0, 2.0, 3.0, 4.0]:
        out = mon.update(v)
    assert out["mean"] == pytest.approx(2.5) and out["var"] == pytest.approx(1.25)
    assert mon.updates_since_improvement == 0 and not mon.stagnant
    for v in [4.0, 4.0, 4.0]:  # variance falls each time: never stagnant
        mon.update(v)
    assert mon.updates_since_improvement == 0
    for v in [4.0, 4.0, 4.0]:  # variance stays 0: no decrease
        out = mon.update(v)
    assert out["stagnant"] == 1.0 and mon.updates_since_improvement == 3
    mon.update(100.0)  # the variance rises: still no decrease
    assert mon.stagnant


def test_divergence_reports_where() -> None:
    det = DivergenceDetector({"loss": (0.0, 10.0)})
    arr = np.zeros((3, 4))
    arr[1, 2] = np.nan
    arr[2, 3] = np.inf
    events = det.update(7, {"params/w": arr, "loss": 11.0, "ok": 1.0, "count": np.int32(5)})
    kinds = {(e.name, e.kind): e for e in events}
    assert kinds[("params/w", "nan")].index == (1, 2)
    assert kinds[("params/w", "inf")].index == (2, 3)
    assert kinds[("loss", "out_of_range")].value == 11.0
    assert len(events) == 3 and det.diverged and det.first_step == 7
    assert "params/w[1, 2]" in kinds[("params/w", "nan")].describe()
    assert det.summary()["nan_events"] == 1.0
    assert DivergenceDetector().update(1, {"x": 1.0}) == []


# ---------------------------------------------------------------- round trips, memory


def _exercise(rng: np.random.Generator, n: int):  # type: ignore[no-untyped-def]
    em = EmergenceTracker((12, 10), recent_size=16, longterm_size=8)
    sp = SpecializationTracker(5, 4, recent_size=16, longterm_size=8)
    mon = ConvergenceMonitor(window=10, patience=5, recent_size=16, longterm_size=8)
    det = DivergenceDetector({"x": (-1.0, 1.0)}, max_events=4)
    for i in range(n):
        pos = rng.integers(0, 10, size=(5, 2))
        em.update(pos, rng.random((12, 10)), rng.integers(0, 4, size=5))
        sp.update(rng.integers(0, 20, size=(5, 4)))
        mon.update(float(rng.normal()))
        det.update(i, {"x": np.array([rng.normal() * 2, np.nan if i % 7 == 0 else 0.0])})
    return em, sp, mon, det


def test_round_trips_are_exact_after_many_updates() -> None:
    rng = np.random.default_rng(0)
    trackers = _exercise(rng, 300)
    for tracker in trackers:
        copy = roundtrip(tracker)
        assert json.dumps(copy.to_dict()) == json.dumps(tracker.to_dict())
        assert copy.summary() == pytest.approx(tracker.summary(), nan_ok=True)
    em, sp, mon, det = trackers
    em2, sp2, mon2, det2 = (roundtrip(t) for t in trackers)
    # The restored trackers continue identically.
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    for a, b in ((em, em2),):
        pos, fld, act = (
            rng_a.integers(0, 10, (5, 2)),
            rng_a.random((12, 10)),
            rng_a.integers(0, 4, 5),
        )
        assert a.update(pos, fld, act) == b.update(pos, fld, act)
    c = rng_b.integers(0, 20, size=(5, 4))
    assert sp.update(c) == sp2.update(c)
    assert mon.update(0.25) == mon2.update(0.25)
    e1, e2 = det.update(999, {"x": np.nan}), det2.update(999, {"x": np.nan})
    assert [e.describe() for e in e1] == [e.describe() for e in e2] != []
    assert json.dumps(det.to_dict()) == json.dumps(det2.to_dict())
    assert np.array_equal(sp.counts, sp2.counts)


def test_memory_stays_bounded() -> None:
    history = History(recent_size=8, longterm_size=16)
    for i in range(1_000_000):
        history.append(float(i))
    assert len(history.recent) == 8 and list(history.recent)[-1] == 999_999.0
    assert len(history.longterm) < 16
    # Evenly spaced samples of the whole run, starting at update 0.
    assert history.longterm[0] == 0.0
    # The stride is the smallest power of two that fits the run in fewer than 16 points.
    stride = history.stride
    assert math.ceil(1_000_000 / stride) < 16 <= math.ceil(1_000_000 / (stride // 2))
    assert history.longterm_steps()[1] == stride
    assert history.longterm == [float(s) for s in history.longterm_steps()]
    em, sp, mon, det = _exercise(np.random.default_rng(2), 400)
    sizes = [len(json.dumps(t.to_dict())) for t in (em, sp, mon, det)]
    em2, sp2, mon2, det2 = _exercise(np.random.default_rng(2), 1200)
    sizes2 = [len(json.dumps(t.to_dict())) for t in (em2, sp2, mon2, det2)]
    for small, big in zip(sizes, sizes2, strict=True):
        assert big < small * 1.2  # 3x the updates, about the same state size
    assert len(det2.events) == 4 and det2.counts["nan"] > 4


def test_nonfinite_values_survive_json() -> None:
    mon = ConvergenceMonitor(window=2, patience=1)
    mon.update(float("nan"))
    mon.update(float("inf"))
    copy = roundtrip(mon)
    assert math.isnan(copy.values[0]) and copy.values[1] == math.inf


def test_bad_arguments_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="window"):
        ConvergenceMonitor(window=0)
    with pytest.raises(ValueError, match="decay"):
        SpecializationTracker(2, 2, decay=1.0)
    with pytest.raises(ValueError, match="action_counts"):
        SpecializationTracker(2, 2).update(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="positions"):
        EmergenceTracker((4, 4)).update(np.zeros((3,)), np.zeros((4, 4)), np.zeros(3))


def test_emergence_batch_update_matches_the_per_snapshot_formulas() -> None:
    rng = np.random.default_rng(0)
    for trial in range(60):
        b, n = int(rng.integers(1, 5)), int(rng.integers(2, 9))
        h, w = (int(x) for x in rng.integers(3, 12, 2))
        pos = rng.integers(0, min(h, w) if trial % 3 else 2, (b, n, 2))
        act = rng.integers(0, int(rng.integers(1, 4)), (b, n))
        fld = rng.random((b, h, w)) * (rng.random((b, h, w)) > 0.5) * (trial % 5 != 0)
        radius = int(rng.integers(0, 3))
        out = EmergenceTracker((h, w), neighbour_radius=radius).update(pos, fld, act)
        assert out["nn_ratio"] == pytest.approx(np.mean([nn_ratio(p, (h, w)) for p in pos]))
        assert out["field_entropy"] == pytest.approx(np.mean([field_entropy(f) for f in fld]))
        kappa = [action_coordination(p, a, (h, w), radius) for p, a in zip(pos, act, strict=True)]
        assert out["action_coordination"] == pytest.approx(np.mean(kappa), abs=1e-12)
