"""The model automation's policy and decisions, on a real registry and trajectory store.

The cycle's training half (a grpo run, registration by export, held-out evaluation in
a child process) runs end to end in tests/service/test_automation_e2e.py; here the
readiness check, the soak's live-reward comparison, dry runs and the state that
survives a restart are checked against real SQLite files.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trainsvc_trajectories as tt
from trainsvc._artifacts import ArtifactStore
from trainsvc._automation import Automation
from trainsvc._automation_policy import AutomationPolicy
from trainsvc._domain import FailedPreconditionError, InvalidArgumentError, NotFoundError
from trainsvc._metrics import Metrics
from trainsvc._model_registry import ModelRegistry

_AGENTS = itertools.count()
POLICY = {"interval_seconds": 60, "judge": "task:increment4"}


def _policy(**overrides: Any) -> AutomationPolicy:
    return AutomationPolicy(**{**POLICY, **overrides})


@pytest.mark.parametrize(
    ("overrides", "field", "why"),
    [
        ({"cron": "0 * * * *"}, "policy.interval_seconds", "exactly one"),
        ({"interval_seconds": 0}, "policy.interval_seconds", "exactly one"),
        ({"interval_seconds": 0, "cron": "61 * * * *"}, "policy.cron", "not a valid cron"),
        ({"judge": "gpt"}, "policy.judge", "task:<name> or llm"),
        ({"judge": "llm"}, "policy.judge_base_url", "http"),
        ({"judge": "llm", "judge_base_url": "http://x/v1"}, "policy.judge_model", "required"),
        ({"grpo_overrides": {"data_file": "x"}}, "policy.grpo_overrides[data_file]", "automation"),
        ({"grpo_overrides": {"lr": "1"}}, "policy.grpo_overrides[lr]", "dotted"),
        ({"quality": {"min_speed": 1.0}}, "policy.quality[min_speed]", "min_reward_coverage"),
        ({"initial_fraction": 1.5}, "policy.initial_fraction", "(0, 1]"),
        ({"eval_samples": 0}, "policy.eval_samples", ">= 1"),
        ({"margin": float("nan")}, "policy.margin", "finite"),
    ],
)
def test_a_bad_policy_names_its_field(overrides: dict[str, Any], field: str, why: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        _policy(**overrides)
    assert info.value.field == field
    assert why in str(info.value)


def test_schedules_fire_on_their_interval_or_cron() -> None:
    at = datetime(2026, 12, 3, 10, 15, 30, tzinfo=UTC).timestamp()
    assert _policy().next_run_time(at) == at + 60
    hourly = _policy(interval_seconds=0, cron="0 * * * *")
    assert hourly.next_run_time(at) == datetime(2026, 12, 3, 11, 0, tzinfo=UTC).timestamp()
    policy = _policy(holdout_scenarios=("s9",), quality={"min_reward_coverage": 0.5})
    assert AutomationPolicy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy


class _NoRuns:
    """The run manager of a service that has no runs: these tests never train."""

    def create_run(self, spec: Any, run_id: str) -> Any:
        raise AssertionError("a test that never trains created a run")

    get_run = resume = create_run


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/trajectories.db"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelRegistry]:
    reg = ModelRegistry(tmp_path / "models.sqlite3")
    for _ in range(2):
        reg.register(
            "trader",
            base_model="",
            artifact_uri=str(tmp_path / "nowhere"),
            artifact_kind="full",
            artifact_sha256="0" * 64,
        )
    reg.set_traffic("trader", {1: 1.0})
    yield reg
    reg.close()


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _automation(registry: ModelRegistry, db_url: str, tmp_path: Path, clock: Any) -> Automation:
    return Automation(
        registry,
        ArtifactStore(tmp_path / "artifacts"),
        _NoRuns(),
        lambda *a: (_ for _ in ()).throw(AssertionError("registered")),
        Metrics(),
        trajectory_db=db_url,
        work_dir=tmp_path / "automation",
        base_model_dir=lambda v: tmp_path,
        clock=clock,
    )


def record(
    db_url: str,
    rewards: Sequence[float],
    *,
    version: int,
    scenario: str = "s0",
    window: str = "w1",
    with_reward: bool = True,
) -> None:
    """Trajectories of one agent each, served by ``trader@v{version}``, one per reward."""
    with tt.TrajectoryRecorder(db_url) as rec:
        for reward in rewards:
            agent = f"agent-{next(_AGENTS)}"  # distinct agents: no duplicates
            t = rec.start_trajectory(agent, window_id=window, scenario_id=scenario)
            rec.start_step(t, {"prompt": "1234"})
            rec.log_llm_call(t, f"trader@v{version}", None, "1234", "2345", 1.0, 4, "answer")
            rec.complete_step(t, {"answer": "2345"}, reward if with_reward else None)
            rec.end_trajectory(t)


def _state(registry: ModelRegistry) -> dict[str, Any]:
    found = registry.automation("trader")
    assert found is not None
    return found[1]


def _soak(registry: ModelRegistry, start: float) -> None:
    """Puts the cycle where a promotion leaves it: version 2 soaking at 20%."""
    registry.promote("trader", 2, 0.2)
    with registry.transaction() as db:
        state = {"phase": "soaking", "candidate": 2, "baseline": 1, "soak_start": start}
        registry.put_automation(db, "trader", state=state)


def test_readiness_counts_new_complete_trajectories_in_windows_that_pass_quality(
    registry: ModelRegistry, db_url: str, tmp_path: Path
) -> None:
    clock = _Clock()
    auto = _automation(registry, db_url, tmp_path, clock)
    with pytest.raises(NotFoundError, match="no automation policy"):
        auto.status("trader")
    auto.set_policy("trader", _policy(min_new_trajectories=6), principal="ops", reason="start")

    (decision,) = auto.run_once("trader")
    assert (decision.action, decision.reason) == (
        "skip",
        "no new complete trajectories since the last training",
    )
    record(db_url, [0.5] * 4, version=1, window="w1")
    record(db_url, [0.5] * 4, version=1, window="w2", with_reward=False)  # fails coverage
    (decision,) = auto.run_once("trader")
    assert decision.action == "skip" and "4 new complete trajectories" in decision.reason
    assert decision.details["windows"] == ["w1"]
    assert "reward_coverage 0.000 < 0.9" in decision.details["failing_windows"]["w2"]

    # the schedule: a scheduled check before its time decides nothing
    assert auto.run_once("trader", scheduled=True) == []
    clock.now += 61
    (scheduled,) = auto.run_once("trader", scheduled=True)
    assert scheduled.action == "skip"

    record(db_url, [0.5, 0.7], version=1, window="w1")
    (dry,) = auto.run_once("trader", dry_run=True)
    assert dry.action == "train" and dry.dry_run
    assert dry.details["new_trajectories"] == 6 and dry.details["run"] == "runs/auto-trader-1"
    # a dry run acted on nothing and recorded nothing
    assert _state(registry)["phase"] == "idle"
    assert not [e for e in registry.events("trader") if e.details.get("action") == "train"]
    skips = [e for e in registry.events("trader") if e.details.get("action") == "skip"]
    assert len(skips) == 3 and all(e.principal == "automation" for e in skips)


def test_a_regressing_candidate_is_rolled_back_and_a_sound_one_promoted_fully(
    registry: ModelRegistry, db_url: str, tmp_path: Path
) -> None:
    clock = _Clock()
    auto = _automation(registry, db_url, tmp_path, clock)
    policy = _policy(soak_seconds=600, min_soak_trajectories=3, regression_margin=0.1)
    auto.set_policy("trader", policy, principal="ops", reason="")
    start = clock.now
    _soak(registry, start)
    record(db_url, [0.8, 0.8, 0.8], version=1)
    record(db_url, [0.75, 0.72], version=2)
    (wait,) = auto.run_once("trader")  # too few of version 2 yet
    assert wait.action == "wait" and "2 and 3 rewarded trajectories" in wait.reason
    record(db_url, [0.74], version=2)
    clock.now += 30
    (wait,) = auto.run_once("trader")  # within the margin, soak not over
    assert wait.action == "wait"
    clock.now += 600
    (full,) = auto.run_once("trader")
    assert full.action == "promote_full"
    assert full.details["candidate_trajectories"] == 3
    assert registry.deployment("trader").traffic == {2: 1.0}  # type: ignore[union-attr]
    assert _state(registry)["phase"] == "idle"

    # the next candidate is worse by more than the margin: rolled back before the soak ends
    registry.register(
        "trader", base_model="", artifact_uri="x", artifact_kind="full", artifact_sha256="0"
    )
    with registry.transaction() as db:  # what a promotion of version 3 leaves
        # live rewards count from the promotion (trajectories end on the real clock)
        state = {"phase": "soaking", "candidate": 3, "baseline": 2, "soak_start": time.time()}
        registry.put_automation(db, "trader", state=state)
    registry.promote("trader", 3, 0.2)
    clock.now += 1
    record(db_url, [0.7, 0.7, 0.7], version=2)
    record(db_url, [0.2, 0.3, 0.1], version=3)
    (rollback,) = auto.run_once("trader")
    assert rollback.action == "rollback" and rollback.severity == "warning"
    assert rollback.details["candidate_reward"] == pytest.approx(0.2)
    assert registry.deployment("trader").traffic == {2: 1.0}  # type: ignore[union-attr]
    events = registry.events("trader")
    rolled = [e for e in events if e.type == "rolled_back"]
    assert rolled[-1].version == 3 and rolled[-1].principal == "automation"
    decision = [e for e in events if e.details.get("action") == "rollback"]
    assert decision[-1].severity == "warning" and decision[-1].sequence == rolled[-1].sequence + 1


def test_the_cycle_state_survives_a_restart_and_a_manual_change_ends_the_soak(
    registry: ModelRegistry, db_url: str, tmp_path: Path
) -> None:
    clock = _Clock()
    auto = _automation(registry, db_url, tmp_path, clock)
    auto.set_policy("trader", _policy(min_soak_trajectories=1), principal="ops", reason="")
    _soak(registry, clock.now)
    path = registry.path
    registry.close()
    reopened = ModelRegistry(path)  # a restart of the service
    try:
        again = _automation(reopened, db_url, tmp_path, clock)
        policy, state = again.status("trader")
        assert policy.min_soak_trajectories == 1 and state["phase"] == "soaking"
        reopened.set_traffic("trader", {1: 1.0}, reason="by hand")
        (abandon,) = again.run_once("trader")
        assert abandon.action == "abandon" and _state(reopened)["phase"] == "idle"
    finally:
        reopened.close()


def test_a_dry_run_policy_records_each_new_decision_once_and_never_acts(
    registry: ModelRegistry, db_url: str, tmp_path: Path
) -> None:
    clock = _Clock()
    auto = _automation(registry, db_url, tmp_path, clock)
    auto.set_policy(
        "trader", _policy(min_new_trajectories=2, dry_run=True), principal="", reason=""
    )
    record(db_url, [0.5, 0.6], version=1)
    for _ in range(3):
        (decision,) = auto.run_once("trader")
        assert decision.action == "train" and decision.dry_run
    recorded = [e for e in registry.events("trader") if e.details.get("action") == "train"]
    assert len(recorded) == 1 and recorded[0].details["dry_run"] is True
    assert _state(registry)["phase"] == "idle"


def test_automation_needs_a_trajectory_store_and_a_registered_model(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    auto = _automation(registry, "", tmp_path, time.time)
    with pytest.raises(FailedPreconditionError, match="--trajectory-db"):
        auto.set_policy("trader", _policy(), principal="", reason="")
    auto = _automation(registry, f"sqlite:///{tmp_path}/t.db", tmp_path, time.time)
    with pytest.raises(NotFoundError):
        auto.set_policy("nobody", _policy(), principal="", reason="")


def test_a_version_1_registry_gains_severity_and_automations(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE model_events (sequence INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT "
        "NOT NULL, version INTEGER NOT NULL DEFAULT 0, type TEXT NOT NULL, time REAL NOT NULL, "
        "principal TEXT NOT NULL, reason TEXT NOT NULL, details TEXT NOT NULL);"
        "INSERT INTO model_events (model, version, type, time, principal, reason, details) "
        "VALUES ('trader', 1, 'registered', 1.0, 'ops', 'first', '{}');"
        "PRAGMA user_version=1;"
    )
    old.close()
    reg = ModelRegistry(path)
    try:
        (event,) = reg.events("trader")
        assert (event.reason, event.severity) == ("first", "info")
        assert reg.automations() == []
    finally:
        reg.close()


def test_a_standby_leaves_the_schedules_to_the_active_instance(
    registry: ModelRegistry, db_url: str, tmp_path: Path
) -> None:
    active, clock = [False], _Clock()
    auto = _automation(registry, db_url, tmp_path, clock)
    auto.is_active = lambda: active[0]
    auto.set_policy("trader", _policy(), principal="", reason="")
    record(db_url, [0.5, 0.6], version=1)
    clock.now += 61  # the schedule is due
    auto.tick_all()  # a standby: nothing is decided
    assert not [e for e in registry.events("trader") if e.details.get("action") == "skip"]
    active[0] = True
    auto.tick_all()
    skips = [e for e in registry.events("trader") if e.details.get("action") == "skip"]
    assert len(skips) == 1 and "2 new complete trajectories" in skips[0].reason
