"""The `emergence` kind: the JAX multi-agent trainer of trainsvc_trainer."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from trainsvc._domain import InvalidArgumentError, RunSpec
from trainsvc.kinds import (
    EmergenceFrame,
    FrameData,
    FrameSink,
    InputRoots,
    checkpoint_files_in,
    is_path_key,
    trainer_field_error,
)

# Typed fields of the wire API's EmergenceConfig -> the trainer's dotted config keys.
TYPED_FIELDS: dict[str, str] = {
    "num_agents": "env.n_agents",
    "field_height": "env.height",
    "field_width": "env.width",
    "num_envs": "env.n_envs",
    "rollout_length": "train.rollout_length",
    "learning_rate": "train.learning_rate",
    "frame_interval": "log.frame_interval",
}
# Keys the service owns: set from the run's seed, budget and checkpoint policy.
_SERVICE_KEYS = {
    "train.seed": "run.seed",
    "train.total_steps": "run.step_budget",
    "train.resume_from": "run.emergence.overrides",
    "log.checkpoint_dir": "run.emergence.overrides",
    "log.save_interval": "run.checkpoint_policy.interval_steps",
    "log.keep_last": "run.checkpoint_policy.keep_last",
    "log.progress": "run.emergence.overrides",
    "log.wandb": "run.emergence.overrides",
}


class EmergenceKind:
    """Adapter factory for `trainsvc_trainer.Trainer`."""

    name = "emergence"
    default_checkpoint_interval = 1000
    resumes_newest_only = False

    def resolve_config(self, spec: RunSpec, inputs: InputRoots) -> dict[str, Any]:
        """Map the run's config onto the trainer's Config and validate it there."""
        from trainsvc_trainer import Config, ConfigError

        field_of: dict[str, str] = {}
        overrides: dict[str, Any] = {}
        for key, value in spec.config.items():
            if key in TYPED_FIELDS:
                dotted, request_field = TYPED_FIELDS[key], f"run.emergence.{key}"
            else:
                dotted, request_field = key, f"run.emergence.overrides[{key}]"
                if dotted in _SERVICE_KEYS:
                    raise InvalidArgumentError(
                        request_field, f"is set by the service from {_SERVICE_KEYS[dotted]}"
                    )
                if is_path_key(dotted):
                    raise InvalidArgumentError(
                        request_field,
                        "is a path, which a client cannot set: a run writes only inside "
                        "its own directory",
                    )
            overrides[dotted] = value
            field_of[dotted] = request_field
        policy = spec.policy
        if policy.keep_every or policy.compress:
            # The trainer's checkpoint manager keeps the newest keep_last files,
            # uncompressed: refuse rather than echo a policy that is not applied.
            name = "keep_every" if policy.keep_every else "compress"
            raise InvalidArgumentError(
                f"run.checkpoint_policy.{name}",
                "is not supported by emergence runs (they keep the newest keep_last "
                "checkpoints, uncompressed)",
            )
        overrides.update(
            {
                "train.seed": spec.seed,
                "train.total_steps": spec.step_budget,
                "log.save_interval": policy.interval_steps or self.default_checkpoint_interval,
                "log.keep_last": policy.keep_last,
                "log.progress": False,
                "log.wandb": False,
            }
        )
        overrides.setdefault("log.frame_dtype", "uint8")
        for dotted, request_field in _SERVICE_KEYS.items():
            field_of.setdefault(dotted, request_field)
        try:
            config = Config().replace(overrides)
        except ConfigError as exc:
            raise trainer_field_error(
                exc, field_of, lambda name: f"run.emergence.overrides[{name}]"
            ) from None
        result: dict[str, Any] = config.to_dict()
        return result

    def create(
        self, config: dict[str, Any], checkpoint_dir: Path, on_frame: FrameSink
    ) -> EmergenceAdapter:
        """Build the trainer with its checkpoints in `checkpoint_dir`."""
        return EmergenceAdapter(config, checkpoint_dir, on_frame)


def _pack_frame(frame: Any) -> FrameData:
    positions = np.asarray(frame.positions).astype("<u2", copy=False)
    field = np.asarray(frame.field)
    if field.dtype == np.uint8:
        encoding, lo, hi, data = "uint8", 0.0, float(frame.field_scale), field.tobytes()
    else:
        f16 = field.astype("<f2")
        encoding, lo, hi, data = "float16", float(field.min()), float(field.max()), f16.tobytes()
    h, w = frame.grid_shape
    return FrameData(
        step=int(frame.step),
        time=float(frame.wall_time),
        metrics={k: float(v) for k, v in frame.metrics.items()},
        emergence=EmergenceFrame(
            num_agents=int(positions.shape[0]),
            positions=positions.tobytes(),
            world_height=int(h),
            world_width=int(w),
            field=data,
            field_shape=tuple(int(s) for s in field.shape),
            field_encoding=encoding,
            field_min=lo,
            field_max=hi,
        ),
    )


class EmergenceAdapter:
    """Drives one `trainsvc_trainer.Trainer` for the worker."""

    def __init__(self, config: dict[str, Any], checkpoint_dir: Path, on_frame: FrameSink) -> None:
        from trainsvc_trainer import Config, Trainer

        data = {section: dict(values) for section, values in config.items()}
        data["log"]["checkpoint_dir"] = str(checkpoint_dir)
        self._checkpoint_dir = checkpoint_dir
        self._on_frame = on_frame
        self._trainer = Trainer(Config.from_dict(data), frame_callback=self._frame)

    def _frame(self, frame: Any) -> None:
        self._on_frame(_pack_frame(frame))

    @property
    def step(self) -> int:
        """Policy updates done."""
        return int(self._trainer.step_count)

    @property
    def metrics(self) -> dict[str, float]:
        """The last step's metrics."""
        return dict(self._trainer.last_metrics)

    def train(self, n: int, should_stop: Callable[[], bool]) -> int:
        """Run up to `n` updates (the trainer saves periodic/final checkpoints itself)."""
        return int(self._trainer.run(n, should_stop))

    def save_checkpoint(self, *, emergency: bool = False) -> Path:
        """Save the current state through the trainer's checkpoint manager."""
        return Path(self._trainer.save_checkpoint(emergency=emergency))

    def restore(self, path: Path) -> int:
        """Restore from a checkpoint file."""
        self._trainer.restore(path)
        return self.step

    def checkpoint_files(self) -> list[Path]:
        """Checkpoint files in the run's directory (retention may have removed older ones)."""
        return checkpoint_files_in(self._checkpoint_dir)

    def close(self) -> None:
        """Flush frames and pending checkpoint writes."""
        self._trainer.close()
        sys.stdout.flush()


KIND = EmergenceKind()
