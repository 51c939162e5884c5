"""A model's automation policy: when to retrain, on what, and how to roll out.

`AutomationPolicy` is the validated form of the wire API's ``AutomationPolicy``
(see ``proto/trainsvc/v1/models.proto``); every field error names the request
field (``policy.cron``) and what is allowed. `next_run_time` turns the schedule
(an interval, or a 5-field cron expression in UTC via croniter) into the next
time the automation fires.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from croniter import croniter

from trainsvc._domain import InvalidArgumentError, echo

QUALITY_FIELDS = (
    "min_complete_fraction",
    "min_llm_step_fraction",
    "min_reward_coverage",
    "max_duplicate_fraction",
    "min_complete_groups",
    "min_group_size",
)
"""The trajectory store's quality thresholds a policy may override (`QualityThresholds`)."""

_TASK_JUDGE = re.compile(r"task:[a-z][a-z0-9_]{0,63}")
_OVERRIDE_KEY = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)+")
# Keys of a grpo run that the automation sets itself.
_AUTOMATION_KEYS = ("data_file", "model", "data.offline_file", "model.dir", "task", "data.task")


_DEFAULTS: dict[str, Any] = {
    "min_new_trajectories": 50,
    "step_budget": 100,
    "eval_samples": 4,
    "initial_fraction": 0.2,
}
"""Defaults of the wire fields whose 0 means "unset"."""


def _bad(name: str, why: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"policy.{name}", why)


@dataclass(frozen=True)
class AutomationPolicy:
    """When and how the service retrains, evaluates and rolls out one model.

    Attributes:
        interval_seconds: fire every this many seconds (exclusive with ``cron``).
        cron: a 5-field cron expression, in UTC.
        min_new_trajectories: complete trajectories since the last training needed to train.
        quality: overrides of the trajectory store's quality thresholds.
        grpo_overrides: the grpo run's config (dotted keys, values as strings parsed
            as JSON when they parse, e.g. ``"4"`` is 4).
        holdout_scenarios: scenario ids never trained on; evaluation runs on them.
        judge: ``task:<name>`` or ``llm`` (with ``judge_base_url`` and ``judge_model``).
        margin: how much higher the new version's evaluation score must be to promote.
        initial_fraction: the traffic share a promoted version gets before its soak.
        soak_seconds, min_soak_trajectories: how long, and on how many rewarded
            trajectories per version, live rewards are compared before full promotion.
        regression_margin: how far below the baseline's live reward the new version
            may fall before it is rolled back.
        dry_run: decide and record, never act.
    """

    enabled: bool = True
    interval_seconds: int = 0
    cron: str = ""
    min_new_trajectories: int = 50
    quality: dict[str, float] = field(default_factory=dict)
    step_budget: int = 100
    seed: int = 0
    grpo_overrides: dict[str, str] = field(default_factory=dict)
    holdout_scenarios: tuple[str, ...] = ()
    eval_samples: int = 4
    judge: str = ""
    judge_base_url: str = ""
    judge_model: str = ""
    margin: float = 0.0
    initial_fraction: float = 0.2
    soak_seconds: int = 3600
    min_soak_trajectories: int = 20
    regression_margin: float = 0.0
    dry_run: bool = False

    def __post_init__(self) -> None:
        if bool(self.interval_seconds) == bool(self.cron):
            raise _bad("interval_seconds", "give exactly one of interval_seconds and cron")
        if self.interval_seconds < 0:
            raise _bad("interval_seconds", f"must be >= 1, got {self.interval_seconds}")
        if self.cron and not croniter.is_valid(self.cron):
            raise _bad("cron", f"is not a valid cron expression: {echo(self.cron)}")
        for name in ("min_new_trajectories", "min_soak_trajectories", "soak_seconds", "seed"):
            if getattr(self, name) < 0:
                raise _bad(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("step_budget", "eval_samples"):
            if getattr(self, name) < 1:
                raise _bad(name, f"must be >= 1, got {getattr(self, name)}")
        for key, value in self.quality.items():
            if key not in QUALITY_FIELDS:
                raise _bad(f"quality[{key}]", f"must be one of {', '.join(QUALITY_FIELDS)}")
            if not math.isfinite(value) or value < 0:
                raise _bad(f"quality[{key}]", f"must be a number >= 0, got {value}")
        for key in self.grpo_overrides:
            if key in _AUTOMATION_KEYS:
                raise _bad(
                    f"grpo_overrides[{key}]",
                    "is set by the automation (the deployed version's weights, the new windows)",
                )
            if not _OVERRIDE_KEY.fullmatch(key):
                raise _bad(f"grpo_overrides[{key}]", "must be a dotted config key, e.g. grpo.beta")
        if self.judge == "llm":
            if not self.judge_base_url.startswith(("http://", "https://")):
                raise _bad("judge_base_url", "must be an http(s) URL for judge llm")
            if not self.judge_model:
                raise _bad("judge_model", "is required for judge llm")
        elif not _TASK_JUDGE.fullmatch(self.judge):
            raise _bad("judge", f"must be task:<name> or llm, got {echo(self.judge)}")
        for name in ("margin", "regression_margin"):
            if not math.isfinite(getattr(self, name)):
                raise _bad(name, "must be a finite number")
        if not 0.0 < self.initial_fraction <= 1.0:
            raise _bad("initial_fraction", f"must be in (0, 1], got {self.initial_fraction}")

    def next_run_time(self, after: float) -> float:
        """The first time the schedule fires after ``after`` (seconds since the epoch)."""
        if self.interval_seconds:
            return after + self.interval_seconds
        start = datetime.fromtimestamp(after, UTC)
        return float(croniter(self.cron, start).get_next(float))

    def to_dict(self) -> dict[str, Any]:
        """The policy as JSON-able values (stored in the model registry)."""
        out = asdict(self)
        out["holdout_scenarios"] = list(self.holdout_scenarios)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutomationPolicy:
        """A policy from `to_dict`'s output (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["holdout_scenarios"] = tuple(values.get("holdout_scenarios", ()))
        return cls(**values)

    @classmethod
    def from_wire(cls, p: Any) -> AutomationPolicy:
        """A policy from the wire API's ``AutomationPolicy`` (0 / empty: the default)."""
        return cls(
            enabled=p.enabled,
            interval_seconds=p.interval_seconds,
            cron=p.cron,
            min_new_trajectories=p.min_new_trajectories or _DEFAULTS["min_new_trajectories"],
            quality=dict(p.quality),
            step_budget=p.step_budget or _DEFAULTS["step_budget"],
            seed=p.seed,
            grpo_overrides=dict(p.grpo_overrides),
            holdout_scenarios=tuple(p.holdout_scenarios),
            eval_samples=p.eval_samples or _DEFAULTS["eval_samples"],
            judge=p.judge,
            judge_base_url=p.judge_base_url,
            judge_model=p.judge_model,
            margin=p.margin,
            initial_fraction=p.initial_fraction or _DEFAULTS["initial_fraction"],
            soak_seconds=p.soak_seconds,
            min_soak_trajectories=p.min_soak_trajectories,
            regression_margin=p.regression_margin,
            dry_run=p.dry_run,
        )


__all__ = ["QUALITY_FIELDS", "AutomationPolicy"]
