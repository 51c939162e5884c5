"""The model automation: retrain on new trajectories, evaluate, promote, soak, roll back.

Each model with an `AutomationPolicy` has a cycle whose state lives in the model
registry (``automations``), so a restart resumes it where it was:

``idle``
    When the schedule fires: **readiness** — complete trajectories ended since the
    last training (``cutoff``) in windows whose data-quality report passes; with at
    least ``min_new_trajectories`` of them, the windows' groups (held-out scenarios
    left out) are exported to ART JSONL and a ``grpo`` run is **created** from the
    deployed version's weights (run id ``auto-<model>-<cycle>``, chosen and stored
    before the run is created, so a crash in between re-creates the same run).
``training``
    When the run completes: its newest checkpoint is **registered** as the next
    version, and **evaluated** against the deployed version on the held-out
    scenarios with the policy's judge (a child process, `trainsvc._automation_eval`).
    Better by ``margin``: **promoted** to ``initial_fraction``; else **rejected**
    (its evaluation ``failed``). A failed or cancelled run ends the cycle (error).
``soaking``
    Live rewards of trajectories served by each version (recorded calls name
    ``model@vN``) since the promotion are compared: the candidate below the baseline
    by more than ``regression_margin`` is **rolled back**; after ``soak_seconds`` with
    ``min_soak_trajectories`` per version it is **promoted fully**.

Every decision is a model event (type ``automation``, its action and numbers in the
details, a severity) written in the same transaction as the state change and the
registry change it makes, and is counted in Prometheus metrics. ``dry_run`` (the
policy's, or one `run_once` call's) decides without acting: a policy's dry-run
decisions are recorded as events marked ``dry_run``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from trainsvc._artifacts import ArtifactStore
from trainsvc._automation_policy import AutomationPolicy
from trainsvc._domain import (
    FailedPreconditionError,
    NotFoundError,
    RunRecord,
    RunSpec,
    ServiceError,
    State,
)
from trainsvc._metrics import Metrics
from trainsvc._model_registry import Also, ModelRegistry, ModelVersion

log = logging.getLogger("trainsvc.automation")

PRINCIPAL = "automation"
EVAL_TIMEOUT_S = 900.0
PHASES = ("idle", "training", "soaking")
DEFAULT_MAX_NEW_TOKENS = 32


class Runs(Protocol):
    """What the automation needs of the run manager."""

    def create_run(self, spec: RunSpec, run_id: str) -> RunRecord: ...
    def get_run(self, run_id: str) -> RunRecord: ...
    def resume(self, run_id: str, checkpoint: str, timeout: float | None) -> RunRecord: ...


RegisterRun = Callable[[str, str, Sequence[str], Mapping[str, float], str, Also], ModelVersion]
"""``(model, run_id, windows, metrics, reason, also)`` -> the version registered from the
run's newest checkpoint (``also`` committed with it)."""


@dataclass(frozen=True)
class Decision:
    """One decision of a cycle: its action, why, the numbers and how serious it is."""

    action: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    severity: str = "info"
    dry_run: bool = False
    version: int = 0


@dataclass
class _Step:
    """One step of one model's cycle: its policy, its state (changed in place), whether
    it acts and records, and the decisions taken."""

    model: str
    policy: AutomationPolicy
    state: dict[str, Any]
    act: bool
    record: bool
    decisions: list[Decision] = field(default_factory=list)


@dataclass
class _Readiness:
    ready: bool
    reason: str
    details: dict[str, Any]
    windows: list[str] = field(default_factory=list)
    cutoff: float = 0.0


def _version_of_call(model: str, call_model: str) -> int | None:
    head, _, tail = call_model.rpartition("@v")
    return int(tail) if head == model and tail.isdigit() else None


def _prompt_messages(art: Any) -> list[dict[str, Any]]:
    """The chat before the first assistant choice of an ART trajectory."""
    out = []
    for item in art.messages_and_choices:
        if "finish_reason" in item or item.get("role") == "assistant":
            break
        out.append({"role": item["role"], "content": item.get("content")})
    return out


_CYCLE_KEYS = (
    "run_id", "windows", "pending_cutoff", "config", "candidate", "baseline", "soak_start",
)  # fmt: skip
"""State that lives only as long as one cycle."""


def _end_cycle(state: dict[str, Any]) -> None:
    """Back to idle, without the finished cycle's run, candidate and soak."""
    for key in _CYCLE_KEYS:
        state.pop(key, None)
    state["phase"] = "idle"


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


class Automation:
    """Runs every model's automation cycle (see the module docstring)."""

    def __init__(
        self,
        registry: ModelRegistry,
        artifacts: ArtifactStore,
        runs: Runs,
        register_run: RegisterRun,
        metrics: Metrics,
        *,
        trajectory_db: str,
        work_dir: Path,
        base_model_dir: Callable[[ModelVersion], Path],
        clock: Callable[[], float] = time.time,
        is_active: Callable[[], bool] = lambda: True,
    ) -> None:
        self.registry, self.artifacts, self.runs = registry, artifacts, runs
        self.register_run, self.metrics = register_run, metrics
        self.trajectory_db, self.work_dir = trajectory_db, work_dir
        self.base_model_dir, self.clock = base_model_dir, clock
        self.is_active = is_active
        """False on a standby of a shared registry: its schedules do not fire."""
        self._lock = threading.Lock()  # one cycle step at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- policy and state -------------------------------------------------------

    def set_policy(
        self, model: str, policy: AutomationPolicy, *, principal: str, reason: str
    ) -> dict[str, Any]:
        """Stores ``model``'s policy (its cycle state is kept); returns the state.

        Waits for a cycle step in progress (an evaluation can take a minute) to finish.
        """
        if not self.trajectory_db:
            raise FailedPreconditionError(
                "automation needs the trajectory store: start the service with --trajectory-db"
            )
        self.registry.version(model, 1)  # NotFound for an unregistered model
        with self._lock:
            return self._put_policy(model, policy, principal, reason)

    def _put_policy(
        self, model: str, policy: AutomationPolicy, principal: str, reason: str
    ) -> dict[str, Any]:
        found = self.registry.automation(model)
        state = found[1] if found else {"phase": "idle", "cycle": 0, "cutoff": 0.0}
        state["next_run_time"] = policy.next_run_time(self.clock())
        with self.registry.transaction() as db:
            self.registry.put_automation(db, model, policy=policy.to_dict(), state=state)
            self.registry.add_event(
                db, model, 0, "automation", principal, reason,
                {"action": "policy", "policy": policy.to_dict()},
            )  # fmt: skip
        return state

    def status(self, model: str) -> tuple[AutomationPolicy, dict[str, Any]]:
        """A model's policy and cycle state.

        Raises:
            NotFoundError: the model has no automation policy.
        """
        found = self.registry.automation(model)
        if found is None:
            raise NotFoundError(f"model {model} has no automation policy (SetAutomation sets one)")
        return AutomationPolicy.from_dict(found[0]), found[1]

    # -- the loop ---------------------------------------------------------------

    def start(self, poll_s: float = 5.0) -> None:
        """Checks every policy every ``poll_s`` seconds in a daemon thread."""

        def loop() -> None:
            while not self._stop.wait(poll_s):
                self.tick_all()

        self._thread = threading.Thread(target=loop, name="trainsvc-automation", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stops the loop (a step in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=EVAL_TIMEOUT_S)

    def tick_all(self) -> None:
        """One scheduled step of every enabled policy (errors are logged, never raised);
        nothing while the service is a standby (another instance is the control plane)."""
        if not self.is_active():
            return
        for model in self.registry.automations():
            try:
                policy, _ = self.status(model)
                if policy.enabled:
                    self.run_once(model, scheduled=True)
            except Exception:
                log.exception("automation of %s failed", model)

    # -- one step ---------------------------------------------------------------

    def run_once(
        self, model: str, *, dry_run: bool = False, scheduled: bool = False
    ) -> list[Decision]:
        """Advances ``model``'s cycle by one step; returns its decisions.

        ``scheduled``: an idle cycle starts only when its schedule is due. ``dry_run``:
        decide without acting or recording anything (a policy's own ``dry_run``
        records its decisions as events, once per change of action, and acts on none).
        """
        with self._lock:
            policy, state = self.status(model)
            step = _Step(
                model, policy, state, act=not (dry_run or policy.dry_run), record=not dry_run
            )
            phase = state.get("phase", "idle")
            if phase == "idle":
                self._idle(step, scheduled=scheduled)
            elif phase == "training":
                self._training(step)
            else:
                self._soaking(step)
            if step.record and not step.act:
                self._record_dry_run(step)
            for decision in step.decisions:
                self.metrics.automation_decisions.labels(model, decision.action).inc()
            return step.decisions

    def _record_dry_run(self, step: _Step) -> None:
        """A policy's dry run: its decisions as events (a repeat of the last action is not)."""
        actions = [d for d in step.decisions if d.action != "wait"]
        last = step.state.get("last_dry_run_action")
        with self.registry.transaction() as db:
            for decision in actions:
                if decision.action != last:
                    self._writer(step.model, decision, None)(db)
                    last = decision.action
            step.state["last_dry_run_action"] = last
            self.registry.put_automation(db, step.model, state=step.state)

    def _writer(self, model: str, decision: Decision, state: Mapping[str, Any] | None) -> Also:
        """Writes ``decision`` as an event, and ``state`` when given, in a transaction."""

        def write(db: Any) -> None:
            details = {"action": decision.action, "dry_run": decision.dry_run, **decision.details}
            self.registry.add_event(
                db, model, decision.version, "automation", PRINCIPAL, decision.reason,
                details, decision.severity,
            )  # fmt: skip
            if state is not None:
                self.registry.put_automation(db, model, state=state)

        return write

    def _decide(self, step: _Step, decision: Decision) -> Also | None:
        """Adds ``decision`` to the step; when acting, returns the writer that commits it
        with the step's state (inside the registry change it goes with)."""
        decision = replace(decision, dry_run=not step.act)
        step.decisions.append(decision)
        if not step.act or decision.action == "wait":
            return None
        step.state["last_decision"] = f"{decision.action}: {decision.reason}"
        return self._writer(step.model, decision, step.state)

    def _commit(self, step: _Step, decision: Decision) -> None:
        """Adds ``decision`` and, when acting, commits it with the step's state."""
        write = self._decide(step, decision)
        if write is not None:
            with self.registry.transaction() as db:
                write(db)

    # -- idle: readiness and training ------------------------------------------

    def _idle(self, step: _Step, *, scheduled: bool) -> None:
        model, policy, state = step.model, step.policy, step.state
        now = self.clock()
        if scheduled and now < float(state.get("next_run_time", 0.0)):
            return
        if step.record:
            state["next_run_time"] = policy.next_run_time(now)
        deployment = self.registry.deployment(model)
        if deployment is None or not deployment.traffic:
            return self._commit(step, Decision("skip", "the model has no deployment to improve on"))
        ready = self._readiness(model, policy, float(state.get("cutoff", 0.0)))
        if not ready.ready:
            return self._commit(step, Decision("skip", ready.reason, ready.details))
        baseline = max(deployment.traffic, key=deployment.traffic.__getitem__)
        cycle = int(state.get("cycle", 0)) + 1
        run_id = f"auto-{model}-{cycle}"
        decision = Decision(
            "train",
            f"{ready.details['new_trajectories']} new complete trajectories in "
            f"{len(ready.windows)} window(s) passing the quality check",
            {**ready.details, "run": f"runs/{run_id}", "baseline": baseline},
            version=baseline,
        )
        if not step.act:
            return self._commit(step, decision)
        try:
            config = self._run_config(model, policy, baseline, ready.windows, cycle)
        except ServiceError as exc:
            return self._fail(step, "cannot prepare the training data", exc)
        state.update(
            phase="training",
            cycle=cycle,
            run_id=run_id,
            windows=ready.windows,
            pending_cutoff=ready.cutoff,
            baseline=baseline,
            config=config,
        )
        self._commit(step, decision)  # the run's id is stored before the run exists
        self._create_run(step)

    def _readiness(self, model: str, policy: AutomationPolicy, cutoff: float) -> _Readiness:
        import trainsvc_trajectories as tt

        counts = ("min_complete_groups", "min_group_size")
        given: dict[str, Any] = {
            k: (int(v) if k in counts else v) for k, v in policy.quality.items()
        }
        thresholds = tt.QualityThresholds(**given)
        held_out = set(policy.holdout_scenarios)
        with tt.Store(self.trajectory_db) as store:
            hour_ago = self.clock() - 3600.0
            recent = store.trajectories(status="completed", ended_after=hour_ago)
            self.metrics.trajectory_collection_rate.labels(model).set(len(recent))
            new = [
                t
                for t in store.trajectories(status="completed", ended_after=cutoff)
                if t.scenario_id not in held_out
            ]
            windows = sorted({t.window_id for t in new})
            reports = {w: tt.quality_report(store, w, thresholds) for w in windows}
        passing = [w for w in windows if reports[w].passed]
        usable = [t for t in new if t.window_id in passing]
        details: dict[str, Any] = {
            "new_trajectories": len(usable),
            "needed": policy.min_new_trajectories,
            "windows": passing,
            "failing_windows": {w: reports[w].failures for w in windows if w not in passing},
        }
        if not new:
            return _Readiness(
                False, "no new complete trajectories since the last training", details
            )
        if len(usable) < policy.min_new_trajectories:
            why = (
                f"{len(usable)} new complete trajectories in windows passing the quality "
                f"check, {policy.min_new_trajectories} needed"
            )
            return _Readiness(False, why, details)
        cutoff = max(t.ended_at or 0.0 for t in usable)
        return _Readiness(True, "ready", details, passing, cutoff)

    def _run_config(
        self,
        model: str,
        policy: AutomationPolicy,
        baseline: int,
        windows: Sequence[str],
        cycle: int,
    ) -> dict[str, Any]:
        """Exports the windows' groups and fetches the baseline; the grpo run's config."""
        import trainsvc_trajectories as tt

        folder = self.work_dir / model / f"cycle-{cycle}"
        folder.mkdir(parents=True, exist_ok=True)
        groups = []
        with tt.Store(self.trajectory_db) as store:
            for w in windows:
                try:
                    found = tt.window_groups(store, w)
                except tt.NoCompleteGroupsError:
                    continue
                groups += [
                    g
                    for g in found
                    if g.metadata.get("scenario_id") not in policy.holdout_scenarios
                ]
        if not groups:
            raise FailedPreconditionError(f"windows {', '.join(windows)} hold no complete group")
        if policy.judge == "llm":  # the rewards the run trains on come from the same judge
            judged = tt.judge_groups(
                tt.LLMJudge(policy.judge_base_url, policy.judge_model), groups, keep_judged=True
            )
            if not judged.groups:
                raise FailedPreconditionError(
                    f"the LLM judge scored no group ({judged.report.skips[:3]})"
                )
            groups = judged.groups
        data = folder / "groups.jsonl"
        tt.write_jsonl(groups, data)
        config: dict[str, Any] = {
            "data_file": str(data),
            "model": str(self._weights(model, baseline)),
        }
        for key, text in policy.grpo_overrides.items():
            try:
                config[key] = json.loads(text)
            except json.JSONDecodeError:
                config[key] = text
        return config

    def _weights(self, model: str, version: int) -> Path:
        """A local model directory holding ``version``'s full weights (for training from)."""
        v = self.registry.version(model, version)
        if v.artifact_kind != "full":
            return self.base_model_dir(v)  # an adapter: train on its base model
        return self._fetch(v)

    def _fetch(self, v: ModelVersion) -> Path:
        dest = self.work_dir / v.model / "versions" / str(v.version)
        if (dest / "config.json").exists():
            return dest
        return self.artifacts.fetch(v.artifact_uri, dest, expected_sha256=v.artifact_sha256)

    def _create_run(self, step: _Step) -> None:
        state = step.state
        spec = RunSpec(
            kind="grpo",
            step_budget=step.policy.step_budget,
            seed=step.policy.seed,
            config=dict(state["config"]),
            display_name=f"automation of {step.model}, cycle {state['cycle']}",
        )
        try:
            self.runs.create_run(spec, state["run_id"])
        except ServiceError as exc:
            self._fail(step, f"the grpo run {state['run_id']} could not start", exc)

    def _fail(self, step: _Step, what: str, exc: Exception) -> None:
        """Ends the cycle with an error decision (the same data is tried again next time)."""
        self.metrics.automation_training_failures.labels(step.model).inc()
        _end_cycle(step.state)
        self._commit(step, Decision("fail", f"{what}: {exc}", {"error": str(exc)}, "error"))

    # -- training: register, evaluate, promote ---------------------------------

    def _training(self, step: _Step) -> None:
        model, state = step.model, step.state
        run_id = state["run_id"]
        try:
            run = self.runs.get_run(run_id)
        except NotFoundError:
            if step.act:  # the service stopped between choosing the run and creating it
                self._create_run(step)
            return self._commit(step, Decision("wait", f"the grpo run {run_id} is being created"))
        if run.state == State.INTERRUPTED and step.act:
            try:
                run = self.runs.resume(run_id, "", None)
            except ServiceError as exc:
                return self._fail(step, f"the grpo run {run_id} cannot resume", exc)
        if not run.state.terminal:
            why = f"the grpo run {run_id} is {run.state.value} (step {run.step})"
            return self._commit(step, Decision("wait", why))
        if run.state != State.COMPLETED:
            ended = Exception(f"{run.state.value}: {run.state_message}")
            return self._fail(step, f"the grpo run {run_id} did not complete", ended)
        metrics = {k: float(v) for k, v in run.metrics.items()}
        decision = Decision(
            "register", f"the grpo run {run_id} completed", {"run_metrics": metrics}
        )
        if not step.act:
            return self._commit(step, decision)

        def registered(db: Any) -> None:
            version = self.registry.latest_version(db, model)
            state.update(candidate=version)
            write = self._decide(step, replace(decision, version=version))
            assert write is not None
            write(db)

        try:
            self.register_run(
                model, run_id, state["windows"], metrics, f"automation cycle {state['cycle']}",
                registered,
            )  # fmt: skip
        except ServiceError as exc:
            return self._fail(step, f"cannot register the run {run_id}", exc)
        self._evaluate(step)

    def _evaluate(self, step: _Step) -> None:
        model, policy, state = step.model, step.policy, step.state
        candidate, baseline = int(state["candidate"]), int(state["baseline"])
        try:
            scores = self._held_out_scores(model, policy, state, (candidate, baseline))
        except ServiceError as exc:
            return self._fail(step, f"cannot evaluate version {candidate}", exc)
        new, old = scores["scores"][str(candidate)], scores["scores"][str(baseline)]
        passed = new - old >= policy.margin
        numbers = {"eval_score": new, "baseline_score": old, "delta": new - old}
        details = {**numbers, "margin": policy.margin, "baseline": baseline}
        details["samples"] = scores["counts"]
        cutoff = float(state.get("pending_cutoff", state.get("cutoff", 0.0)))
        for key in ("run_id", "windows", "pending_cutoff", "config"):
            state.pop(key, None)
        state.update(cutoff=cutoff, last_training_time=self.clock())
        if not passed:
            _end_cycle(state)
            decision = Decision(
                "reject",
                f"version {candidate} scored {new:.4f} on held-out scenarios, version "
                f"{baseline} {old:.4f}: not better by the margin {policy.margin}",
                details, "warning", version=candidate,
            )  # fmt: skip
            self.registry.record_evaluation(
                model, candidate, False, numbers, principal=PRINCIPAL, reason=decision.reason,
                also=self._decide(step, decision),
            )  # fmt: skip
            return None
        self.registry.record_evaluation(
            model, candidate, True, numbers, principal=PRINCIPAL,
            reason=f"held-out score {new:.4f} vs {old:.4f} (version {baseline})",
        )  # fmt: skip
        state.update(phase="soaking", soak_start=self.clock())
        decision = Decision(
            "promote",
            f"version {candidate} scored {new:.4f} on held-out scenarios vs {old:.4f}: "
            f"promoted to {policy.initial_fraction:.0%} of the traffic for its soak",
            {**details, "fraction": policy.initial_fraction},
            version=candidate,
        )
        self.registry.promote(
            model, candidate, policy.initial_fraction, principal=PRINCIPAL,
            reason=decision.reason, also=self._decide(step, decision),
        )  # fmt: skip
        return None

    def _held_out_scores(
        self,
        model: str,
        policy: AutomationPolicy,
        state: Mapping[str, Any],
        versions: Sequence[int],
    ) -> dict[str, Any]:
        """Each version's mean judged score on the held-out prompts (a child process)."""
        prompts = self._held_out_prompts(policy, state)
        spec = {
            "versions": {str(v): self._loadable(model, v) for v in versions},
            "prompts": prompts,
            "samples": policy.eval_samples,
            "max_new_tokens": int(
                json.loads(policy.grpo_overrides.get("grpo.max_new_tokens", "0"))
                or DEFAULT_MAX_NEW_TOKENS
            ),
            "temperature": 1.0,
            "seed": policy.seed,
            "judge": policy.judge,
            "judge_base_url": policy.judge_base_url,
            "judge_model": policy.judge_model,
        }
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
        cmd = [sys.executable, "-m", "trainsvc._automation_eval", f.name]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=EVAL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise FailedPreconditionError(f"evaluation took over {EVAL_TIMEOUT_S:.0f} s") from None
        finally:
            Path(f.name).unlink(missing_ok=True)
        try:
            result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            result = {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
        if done.returncode != 0 or "error" in result:
            raise FailedPreconditionError(str(result.get("error")))
        return result

    def _loadable(self, model: str, version: int) -> dict[str, str]:
        v = self.registry.version(model, version)
        if v.artifact_kind == "full":
            return {"model_dir": str(self._fetch(v))}
        return {"model_dir": str(self.base_model_dir(v)), "adapter": str(self._fetch(v))}

    def _held_out_prompts(
        self, policy: AutomationPolicy, state: Mapping[str, Any]
    ) -> list[list[dict[str, Any]]]:
        """Up to 4 distinct prompts per held-out scenario (or per trained scenario)."""
        import trainsvc_trajectories as tt

        held_out = set(policy.holdout_scenarios)
        with tt.Store(self.trajectory_db) as store:
            if held_out:
                pool = [
                    t for t in store.trajectories(status="completed") if t.scenario_id in held_out
                ]
            else:
                pool = [
                    t
                    for w in state.get("windows", ())
                    for t in store.trajectories(w, status="completed")
                ]
        by_scenario: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
        for t in pool:
            messages = _prompt_messages(tt.to_art_trajectory(t))
            chosen = by_scenario[str(t.scenario_id)]
            if messages and messages not in chosen and len(chosen) < 4:
                chosen.append(messages)
        prompts = [m for ms in by_scenario.values() for m in ms]
        if not prompts:
            raise FailedPreconditionError(
                "no held-out prompts: no completed trajectory of scenarios "
                f"{sorted(held_out) or 'of the trained windows'} holds an LLM call"
            )
        return prompts

    # -- soaking: compare live rewards ------------------------------------------

    def live_rewards(self, model: str, since: float) -> dict[int, list[float]]:
        """Rewards of completed trajectories ended after ``since``, by serving version."""
        import trainsvc_trajectories as tt

        out: dict[int, list[float]] = defaultdict(list)
        with tt.Store(self.trajectory_db) as store:
            for t in store.trajectories(status="completed", ended_after=since):
                versions = {_version_of_call(model, c.model) for c in t.llm_calls}
                if t.reward is None or len(versions) != 1 or None in versions:
                    continue  # not this model's, or served by two versions
                (version,) = versions
                assert version is not None
                out[version].append(float(t.reward))
        return out

    def _soaking(self, step: _Step) -> None:
        model, policy, state = step.model, step.policy, step.state
        candidate, baseline = int(state["candidate"]), int(state["baseline"])
        deployment = self.registry.deployment(model)
        if deployment is None or candidate not in deployment.traffic:
            _end_cycle(state)
            why = f"version {candidate} left the traffic by another change; the soak ends"
            return self._commit(step, Decision("abandon", why, version=candidate))
        start = float(state["soak_start"])
        rewards = self.live_rewards(model, start)
        new, old = rewards.get(candidate, []), rewards.get(baseline, [])
        for v, rs in ((candidate, new), (baseline, old)):
            self.metrics.automation_live_reward.labels(model, str(v)).set(_mean(rs))
        soaked = self.clock() - start
        numbers = {
            "candidate_reward": _mean(new),
            "baseline_reward": _mean(old),
            "candidate_trajectories": len(new),
            "baseline_trajectories": len(old),
            "regression_margin": policy.regression_margin,
            "soaked_seconds": soaked,
            "baseline": baseline,
        }
        enough = min(len(new), len(old)) >= max(policy.min_soak_trajectories, 1)
        if enough and _mean(new) < _mean(old) - policy.regression_margin:
            if step.act:
                self.metrics.automation_regressions.labels(model).inc()
                _end_cycle(state)
            decision = Decision(
                "rollback",
                f"version {candidate}'s live reward {_mean(new):.4f} ({len(new)} trajectories) "
                f"is below version {baseline}'s {_mean(old):.4f} ({len(old)}) by more than "
                f"{policy.regression_margin}",
                numbers, "warning", version=candidate,
            )  # fmt: skip
            also = self._decide(step, decision)
            if also is not None:
                self.registry.rollback(
                    model, principal=PRINCIPAL, reason=decision.reason, also=also
                )
            return None
        if not enough or soaked < policy.soak_seconds:
            why = (
                f"soaking: {len(new)} and {len(old)} rewarded trajectories of versions "
                f"{candidate} and {baseline}, {soaked:.0f} of {policy.soak_seconds} s"
            )
            return self._commit(step, Decision("wait", why, numbers))
        if step.act:
            _end_cycle(state)
        decision = Decision(
            "promote_full",
            f"version {candidate}'s live reward {_mean(new):.4f} held against version "
            f"{baseline}'s {_mean(old):.4f} over the soak: all traffic",
            numbers,
            version=candidate,
        )
        also = self._decide(step, decision)
        if also is not None:
            self.registry.promote(
                model, candidate, 1.0, principal=PRINCIPAL, reason=decision.reason, also=also
            )
        return None


__all__ = ["PHASES", "Automation", "Decision", "RegisterRun", "Runs"]
