"""The quality report's measures and thresholds."""

from __future__ import annotations

from pathlib import Path

import pytest
import trainsvc_trajectories as tt


def test_duplicates_missing_rewards_and_llm_coverage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    with tt.TrajectoryRecorder(url) as rec:
        for _ in range(2):  # the same trajectory twice: one duplicate
            with rec.trajectory("a", window_id="w", scenario_id="s") as t:
                rec.start_step(t, {"x": 1})
                rec.log_llm_call(t, "m", "s", "u", "r")
                rec.complete_step(t, "act", 1.0)
        with rec.trajectory("b", window_id="w", scenario_id="s") as t:
            rec.start_step(t, {"x": 2})  # no LLM call, no reward
            rec.complete_step(t, "act", None)
            rec.start_step(t, {"x": 3})
            rec.log_provider_access(t, "feed", [1, 2])
            rec.complete_step(t, "act", 0.5)
        rec.start_trajectory("c", window_id="w", scenario_id="s")  # left open
    with tt.Store(url) as store:
        rep = tt.quality_report(store, "w")
        strict = tt.quality_report(store, "w", tt.QualityThresholds(min_complete_groups=2))
    assert rep.by_status == {"open": 1, "completed": 3, "failed": 0, "abandoned": 0}
    assert rep.complete_fraction == 0.75 and rep.steps == 4
    assert (rep.steps_with_llm_calls, rep.llm_step_fraction) == (2, 0.5)
    assert (rep.rewarded_steps, rep.reward_coverage) == (3, 0.75)
    assert (rep.provider_accesses, rep.steps_with_provider_access) == (1, 1)
    assert rep.duplicates == 1 and rep.duplicate_fraction == pytest.approx(1 / 3)
    assert rep.complete_groups == 1 and not rep.passed
    assert rep.failures == [
        "complete_fraction 0.750 < 0.8",
        "reward_coverage 0.750 < 0.9",
        "duplicate_fraction 0.333 > 0.1",
    ]
    assert "complete_groups 1 < 2" in strict.failures
    assert rep.to_dict()["passed"] is False
    with pytest.raises(tt.InvalidRecordError, match="min_reward_coverage"):
        tt.QualityThresholds(min_reward_coverage=1.5)
