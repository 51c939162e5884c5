"""GetRunMetrics: a run's curves from the service, for a run nobody watched, across a
restart (the history is kept with the run on disk)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from trainsvc_client import NotFoundError, pb

from .conftest import TERMINAL, TINY, Service


def test_a_finished_run_keeps_its_metric_history_across_a_restart(
    start_service: Callable[..., Service], wait_for: Any
) -> None:
    svc = start_service()
    with svc.client() as c:
        run = c.create_run("emergence", step_budget=40, seed=2, config=dict(TINY))
        done = wait_for(c, run.name, lambda r: r.state in TERMINAL, timeout=300)
        assert done.state == pb.Run.COMPLETED, done.state_message
        history = c.get_run_metrics(run.name)
        with pytest.raises(NotFoundError):
            c.get_run_metrics("runs/no-such-run")
    steps = [step for step, _ in history]
    assert steps == sorted(steps) and steps[0] <= 2 and steps[-1] == 40
    assert set(history[-1][1]) >= set(done.metrics)  # the frames carried the run's metrics
    assert history[-1][1] == pytest.approx(dict(done.metrics))

    assert svc.terminate() == 0
    again = start_service(svc.data_dir)
    with again.client() as c:
        assert c.get_run_metrics(run.name) == history
