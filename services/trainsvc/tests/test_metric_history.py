"""The service's per-run metric history: bounded, written atomically, read back."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from trainsvc._metric_history import CAPACITY, FILE_NAME, RunMetricHistories


def test_a_history_survives_its_process_and_stays_bounded(tmp_path: Path) -> None:
    histories = RunMetricHistories(lambda run_id: tmp_path / run_id, flush_s=0.0)
    (tmp_path / "r1").mkdir()
    for step in range(1, 5 * CAPACITY):
        histories.add("r1", step, {"loss": 1.0 / step, "nan": float("nan")})
    histories.add("r1", 5 * CAPACITY, {})  # a frame without metrics is no point
    live = histories.points("r1")
    assert live[0][0] == 1 and live[-1][0] == 5 * CAPACITY - 1 and len(live) <= CAPACITY + 1
    histories.end("r1")

    again = RunMetricHistories(lambda run_id: tmp_path / run_id)  # a restarted service
    read = again.points("r1")
    assert [s for s, _ in read] == [s for s, _ in live]
    assert all("nan" not in m for _, m in read)  # JSON has no NaN: non-finite values are dropped
    assert read[-1][1]["loss"] == pytest.approx(1.0 / (5 * CAPACITY - 1))
    assert again.points("never-ran") == []
    assert not list(tmp_path.glob("r1/.*.tmp"))  # no temporary file is left behind


def test_a_resumed_run_continues_its_history_and_a_corrupt_file_costs_only_curves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "r1").mkdir()
    first = RunMetricHistories(lambda run_id: tmp_path / run_id, flush_s=3600)
    for step in range(1, 11):
        first.add("r1", step, {"reward": float(step)})
    first.end("r1")  # the run paused: its history is on disk
    resumed = RunMetricHistories(lambda run_id: tmp_path / run_id, flush_s=3600)
    for step in range(8, 13):  # resumed from the checkpoint of step 7
        resumed.add("r1", step, {"reward": 100.0 + step})
    points = resumed.points("r1")
    assert [s for s, _ in points] == list(range(1, 13))
    assert points[8][1]["reward"] == 109.0  # step 9 is the resumed run's

    (tmp_path / "r1" / FILE_NAME).write_text('{"points": [[1, {"reward": ')
    with caplog.at_level(logging.WARNING, logger="trainsvc.history"):
        assert RunMetricHistories(lambda run_id: tmp_path / run_id).points("r1") == []
    assert "unreadable metric history" in caplog.text
    gone = RunMetricHistories(lambda run_id: tmp_path / "missing" / run_id, flush_s=0.0)
    with caplog.at_level(logging.WARNING, logger="trainsvc.history"):
        gone.add("r2", 1, {"loss": 1.0})  # its directory is gone: logged, not raised
    assert "cannot write the metric history" in caplog.text
