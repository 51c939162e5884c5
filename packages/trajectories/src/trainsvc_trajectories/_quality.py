"""The data-quality report of a window, and the threshold a training trigger checks."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ._errors import InvalidRecordError
from ._store import STATUSES, Store, StoredTrajectory


@dataclass(frozen=True)
class QualityThresholds:
    """Minimums a window must meet before training on it (fractions in [0, 1])."""

    min_complete_fraction: float = 0.8
    min_llm_step_fraction: float = 0.5
    min_reward_coverage: float = 0.9
    max_duplicate_fraction: float = 0.1
    min_complete_groups: int = 1
    min_group_size: int = 2

    def __post_init__(self) -> None:
        for name in (
            "min_complete_fraction",
            "min_llm_step_fraction",
            "min_reward_coverage",
            "max_duplicate_fraction",
        ):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InvalidRecordError(name, f"must be in [0, 1], got {v!r}")
        if self.min_complete_groups < 0 or self.min_group_size < 1:
            raise InvalidRecordError(
                "min_complete_groups", "must be >= 0 (and min_group_size >= 1)"
            )


@dataclass(frozen=True)
class QualityReport:
    """Counts and fractions for one window; ``passed`` is False when a threshold fails."""

    window_id: str
    trajectories: int
    by_status: dict[str, int]
    complete_fraction: float
    steps: int
    steps_with_llm_calls: int
    llm_step_fraction: float
    rewarded_steps: int
    reward_coverage: float
    llm_calls: int
    provider_accesses: int
    steps_with_provider_access: int
    duplicates: int
    duplicate_fraction: float
    scenarios: int
    complete_groups: int
    thresholds: QualityThresholds
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def _fingerprint(t: StoredTrajectory) -> str:
    """Same agent, scenario, states, actions, rewards and LLM exchanges -> same print."""
    body = {
        "agent": t.agent_id,
        "scenario": t.scenario_id,
        "steps": [(s.environment_state, s.action, s.reward) for s in t.steps],
        "calls": [
            (c.model, c.system_prompt, c.user_prompt, c.messages, c.response) for c in t.llm_calls
        ],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _frac(n: int, d: int) -> float:
    return n / d if d else 0.0


def quality_report(
    store: Store, window_id: str, thresholds: QualityThresholds | None = None
) -> QualityReport:
    """Measure a window: complete trajectories, steps with LLM calls, reward coverage
    (completed steps with a reward), provider accesses, duplicates and complete groups.
    """
    th = thresholds or QualityThresholds()
    ts = store.trajectories(window_id)
    by_status = Counter(t.status for t in ts)
    completed = [t for t in ts if t.status == "completed"]
    steps = [s for t in completed for s in t.steps]
    llm_steps = sum(
        len({c.step_index for c in t.llm_calls if c.step_index is not None}) for t in completed
    )
    access_steps = sum(
        len({a.step_index for a in t.provider_accesses if a.step_index is not None})
        for t in completed
    )
    done_steps = [s for s in steps if s.completed_at is not None]
    rewarded = sum(1 for s in done_steps if s.reward is not None)
    prints = Counter(_fingerprint(t) for t in completed)
    duplicates = sum(n - 1 for n in prints.values())
    scen = Counter(
        t.scenario_id for t in completed if t.scenario_id is not None and t.reward is not None
    )
    groups = sum(1 for n in scen.values() if n >= th.min_group_size)
    report = QualityReport(
        window_id=window_id,
        trajectories=len(ts),
        by_status={s: by_status.get(s, 0) for s in STATUSES},
        complete_fraction=_frac(len(completed), len(ts)),
        steps=len(steps),
        steps_with_llm_calls=llm_steps,
        llm_step_fraction=_frac(llm_steps, len(steps)),
        rewarded_steps=rewarded,
        reward_coverage=_frac(rewarded, len(done_steps)),
        llm_calls=sum(len(t.llm_calls) for t in completed),
        provider_accesses=sum(len(t.provider_accesses) for t in completed),
        steps_with_provider_access=access_steps,
        duplicates=duplicates,
        duplicate_fraction=_frac(duplicates, len(completed)),
        scenarios=len({t.scenario_id for t in ts}),
        complete_groups=groups,
        thresholds=th,
    )
    failures = report.failures
    if not ts:
        failures.append("no trajectories in this window")
    if report.complete_fraction < th.min_complete_fraction:
        failures.append(
            f"complete_fraction {report.complete_fraction:.3f} < {th.min_complete_fraction}"
        )
    if report.llm_step_fraction < th.min_llm_step_fraction:
        failures.append(
            f"llm_step_fraction {report.llm_step_fraction:.3f} < {th.min_llm_step_fraction}"
        )
    if report.reward_coverage < th.min_reward_coverage:
        failures.append(f"reward_coverage {report.reward_coverage:.3f} < {th.min_reward_coverage}")
    if report.duplicate_fraction > th.max_duplicate_fraction:
        failures.append(
            f"duplicate_fraction {report.duplicate_fraction:.3f} > {th.max_duplicate_fraction}"
        )
    if groups < th.min_complete_groups:
        failures.append(f"complete_groups {groups} < {th.min_complete_groups}")
    return report
