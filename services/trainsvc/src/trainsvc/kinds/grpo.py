"""The `grpo` kind: GRPO reinforcement learning of a language model (trainsvc_lm).

One step is one sampled batch of groups and its optimizer updates. The source is
either a shipped task (``run.grpo.task``: completions are sampled online and scored
with the task's verifiable reward, or with the trajectory library's rule judge when
``run.grpo.judge = "rule"``) or recorded groups (``run.grpo.data_file``: ART legacy
JSONL or Parquet exported from the trajectory store, judged with the rule judge
when the worker starts). Without ``run.grpo.model`` a tiny digit transformer is
trained from scratch.

Frames carry ``reward_mean``, ``reward_std``, ``kl``, ``clip_fraction``,
``groups_kept``, ``train_loss``, ``learning_rate``, ``tokens_per_s`` and, at
evaluation steps, ``eval_reward``; the latest sample completion travels in the
LMPayload, as for ``lora`` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from trainsvc._domain import InvalidArgumentError, RunSpec
from trainsvc.kinds import (
    FrameData,
    FrameSink,
    InputRoots,
    LMFrame,
    RunInputError,
    checkpoint_files_in,
    is_path_key,
    trainer_field_error,
)

# Typed fields of the wire API's GrpoConfig -> the trainer's dotted config keys.
TYPED_FIELDS: dict[str, str] = {
    "task": "data.task",
    "data_file": "data.offline_file",
    "model": "model.dir",
    "group_size": "grpo.group_size",
    "prompts_per_step": "grpo.prompts_per_step",
    "learning_rate": "optim.lr",
    "epsilon": "grpo.epsilon",
    "epsilon_high": "grpo.epsilon_high",
    "beta": "grpo.beta",
    "loss_norm": "grpo.loss_norm",
    "eval_interval": "log.eval_interval",
    "sample_interval": "log.sample_interval",
}
_PATHS: dict[str, Literal["file", "dir"]] = {"data_file": "file", "model": "dir"}
JUDGES = ("verifiable", "rule")
# Keys the service owns, and where their value comes from.
_SERVICE_KEYS = {
    "train.seed": "run.seed",
    "train.steps": "run.step_budget",
    "train.resume_from": "CreateRunRequest.resume_from and ResumeRun",
    "log.checkpoint_dir": "the run's directory",
    "log.save_interval": "run.checkpoint_policy.interval_steps",
    "log.keep_last": "run.checkpoint_policy.keep_last",
    "log.wandb": "the service (off: its files would land outside the run's directory)",
    "log.wandb_mode": "the service (W&B is off for service runs)",
    "log.wandb_project": "the service (W&B is off for service runs)",
    "data.reward": "run.grpo.judge",
}
_METRIC_NAMES = {"loss": "train_loss", "lr": "learning_rate", "tok_s": "tokens_per_s"}


def _request_field(key: str) -> str:
    return (
        f"run.grpo.{key}"
        if key in TYPED_FIELDS or key == "judge"
        else (f"run.grpo.overrides[{key}]")
    )


def _trainer_overrides(spec: RunSpec, inputs: InputRoots) -> tuple[dict[str, Any], dict[str, str]]:
    """The run's config as the trainer's dotted overrides, and each one's request field."""
    overrides: dict[str, Any] = {}
    field_of: dict[str, str] = {}
    for key, value in spec.config.items():
        request_field = _request_field(key)
        if key == "judge":
            if value not in ("", *JUDGES):
                raise InvalidArgumentError(
                    request_field, f"must be one of {', '.join(JUDGES)}, got {value!r}"
                )
            overrides["data.reward"] = "judge" if value == "rule" else "verifiable"
            field_of["data.reward"] = request_field
            continue
        if key in TYPED_FIELDS:
            dotted = TYPED_FIELDS[key]
            if key in _PATHS and value != "":
                value = str(inputs.resolve(value, request_field, expect=_PATHS[key]))
            if value == "":
                continue  # an unset string field
        else:
            dotted = key
            if dotted in _SERVICE_KEYS:
                raise InvalidArgumentError(
                    request_field, f"is set by the service from {_SERVICE_KEYS[dotted]}"
                )
            if is_path_key(dotted) or dotted == "model.dir":
                raise InvalidArgumentError(
                    request_field,
                    "is a path, which a client cannot set: set run.grpo.model or "
                    "run.grpo.data_file (confined to the service's input directories)",
                )
        overrides[dotted] = value
        field_of[dotted] = request_field
    if "data.offline_file" in overrides:
        if "data.task" in overrides:
            raise InvalidArgumentError(
                "run.grpo.task", "give either run.grpo.task or run.grpo.data_file, not both"
            )
        overrides["data.task"] = None
    elif "data.task" not in overrides:
        raise InvalidArgumentError(
            "run.grpo.task", "is required (sort4 or increment4), or give run.grpo.data_file"
        )
    policy = spec.policy
    if policy.keep_every or policy.compress:
        name = "keep_every" if policy.keep_every else "compress"
        raise InvalidArgumentError(
            f"run.checkpoint_policy.{name}",
            "is not supported by grpo runs (they keep the newest keep_last checkpoints)",
        )
    overrides.update(
        {
            "train.seed": spec.seed,
            "train.steps": spec.step_budget,
            "log.save_interval": policy.interval_steps or KIND.default_checkpoint_interval,
            "log.keep_last": policy.keep_last,
            "log.wandb": False,
        }
    )
    overrides.setdefault("log.frame_interval", 1)
    for dotted, source in _SERVICE_KEYS.items():
        field_of.setdefault(dotted, source if source.startswith("run.") else "run.grpo")
    return overrides, field_of


def rule_judge_reward(task_name: str) -> Callable[[Sequence[str], Sequence[str]], list[float]]:
    """A group reward from the trajectory library's `RuleJudge` (relative scores in [0, 1]).

    Each completion becomes an ART trajectory (the prompt as the user message, the
    completion as the assistant's); the judge's rule reads both and counts the
    positions the completion gets right for the task, and the judge scales each
    group's raw scores min-max (best 1, worst 0, all equal 0.5). A group the judge
    skips scores 0.5 throughout (no signal).
    """
    import trainsvc_trajectories as tt
    from trainsvc_lm import TASKS

    task = TASKS[task_name]

    def rule(trajectory: Any) -> float:
        items = trajectory.messages_and_choices
        return task.reward(str(items[0]["content"]), str(items[-1]["content"]))

    judge = tt.RuleJudge([("task_rule", 1.0, rule)])

    def score(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        group = tt.ArtTrajectoryGroup(
            trajectories=[
                tt.ArtTrajectory(
                    messages_and_choices=[
                        {"role": "user", "content": p},
                        {"role": "assistant", "content": c},
                    ]
                )
                for p, c in zip(prompts, completions, strict=True)
            ]
        )
        result = tt.judge_groups(judge, [group])
        if not result.groups:
            return [0.5] * len(completions)
        return [float(t.reward) for t in result.groups[0].trajectories]

    return score


def read_offline_groups(path: str) -> list[Any]:
    """Recorded groups from ART JSONL or Parquet, judged with the default `RuleJudge`.

    Groups that a judge already scored (``trainsvc-traj judge``, e.g. with an LLM
    judge: every trajectory has ``metrics["ruler_score"]``) keep those scores.

    Raises:
        RunInputError: the file is unreadable or no group survives judging.
    """
    import trainsvc_trajectories as tt
    from trainsvc_lm import groups_from_art

    try:
        groups = tt.read_parquet(path) if path.endswith(".parquet") else tt.read_jsonl(path)
        judged = tt.judge_groups(tt.RuleJudge(), groups, keep_judged=True)
    except tt.TrajectoryError as exc:
        raise RunInputError(f"{path}: {exc}") from exc
    if not judged.groups:
        raise RunInputError(f"{path}: no group could be judged ({judged.report.skips[:3]})")
    return groups_from_art([g.model_dump() for g in judged.groups], source=path)


class GrpoKind:
    """Adapter factory for `trainsvc_lm.GRPOTrainer`."""

    name = "grpo"
    default_checkpoint_interval = 50
    resumes_newest_only = False

    def resolve_config(self, spec: RunSpec, inputs: InputRoots) -> dict[str, Any]:
        """Map the run's config onto the trainer's GRPOConfig and validate it."""
        from trainsvc_lm import ConfigError, GRPOConfig

        overrides, field_of = _trainer_overrides(spec, inputs)
        try:
            config = GRPOConfig().replace(overrides)
        except ConfigError as exc:
            raise trainer_field_error(exc, field_of, _request_field) from None
        result: dict[str, Any] = config.to_dict()
        return result

    def create(
        self, config: dict[str, Any], checkpoint_dir: Path, on_frame: FrameSink
    ) -> GrpoAdapter:
        """Build the trainer with its checkpoints in `checkpoint_dir`.

        Raises:
            RunInputError: the trainer refused its inputs (weights, recorded groups).
        """
        from trainsvc_lm import LMError

        try:
            return GrpoAdapter(config, checkpoint_dir, on_frame)
        except LMError as exc:
            raise RunInputError(str(exc)) from exc


class GrpoAdapter:
    """Drives one `trainsvc_lm.GRPOTrainer` for the worker."""

    def __init__(self, config: dict[str, Any], checkpoint_dir: Path, on_frame: FrameSink) -> None:
        import trainsvc_lm

        data = {section: dict(values) for section, values in config.items()}
        data["log"]["checkpoint_dir"] = str(checkpoint_dir)
        cfg = trainsvc_lm.GRPOConfig.from_dict(data)
        reward_fn = None
        if cfg.data.reward == "judge":
            assert cfg.data.task is not None
            reward_fn = rule_judge_reward(cfg.data.task)
        offline = None
        if cfg.data.offline_file is not None:
            offline = read_offline_groups(cfg.data.offline_file)
        self._checkpoint_dir = checkpoint_dir
        self._on_frame = on_frame
        self._sample = LMFrame()
        self._eval: float | None = None
        self._trainer = trainsvc_lm.GRPOTrainer(
            cfg, frame_callback=self._frame, reward_fn=reward_fn, offline_groups=offline
        )

    def _frame(self, frame: Any) -> None:
        if frame.sample_completion is not None:
            self._sample = LMFrame(
                sample_prompt=str(frame.sample_prompt or ""),
                sample_completion=str(frame.sample_completion),
                sample_step=int(frame.step),
            )
        metrics = {k: float(v) for k, v in frame.metrics.items()}
        if "eval_reward" in metrics:
            self._eval = metrics["eval_reward"]
        elif self._eval is not None:
            metrics["eval_reward"] = self._eval
        self._on_frame(
            FrameData(
                step=int(frame.step), time=float(frame.wall_time), metrics=metrics, lm=self._sample
            )
        )

    @property
    def step(self) -> int:
        """Optimizer steps (sampled batches) done."""
        return int(self._trainer.step_count)

    @property
    def metrics(self) -> dict[str, float]:
        """The last step's metrics under the frames' names, with the latest held-out reward."""
        out = {_METRIC_NAMES.get(k, k): float(v) for k, v in self._trainer.last_metrics.items()}
        if self._eval is not None:
            out.setdefault("eval_reward", self._eval)
        return out

    def train(self, n: int, should_stop: Callable[[], bool]) -> int:
        """Run up to `n` steps (the trainer saves periodic and final checkpoints itself)."""
        return int(self._trainer.run(n, should_stop))

    def save_checkpoint(self, *, emergency: bool = False) -> Path:
        """Save the exact current state (policy or adapters, optimizer, step)."""
        return Path(self._trainer.save_checkpoint(emergency=emergency))

    def restore(self, path: Path) -> int:
        """Restore from a checkpoint file.

        Raises:
            RunInputError: the checkpoint does not fit this run (named field).
        """
        from trainsvc_checkpoint import IncompatibleCheckpointError
        from trainsvc_lm import ConfigError

        try:
            self._trainer.restore(path)
        except (ConfigError, IncompatibleCheckpointError) as exc:
            raise RunInputError(f"{path.name} does not fit this run: {exc}") from exc
        return self.step

    def checkpoint_files(self) -> list[Path]:
        """Checkpoint files in the run's directory."""
        return checkpoint_files_in(self._checkpoint_dir)

    def close(self) -> None:
        """Wait for pending checkpoint writes."""
        self._trainer.close()


KIND = GrpoKind()
