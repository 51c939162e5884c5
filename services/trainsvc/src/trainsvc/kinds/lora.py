"""The `lora` kind: LoRA fine-tuning of a language model on chat data (trainsvc_lm).

One step is one optimizer update of the adapters. The run's inputs (the base
model's directory, the training and validation JSONL) are paths on the
service's machine; `resolve_config` confines them to the service's input
directories and checks them — config, architecture, tokenizer and chat
template, every data line — before the run exists, so bad input is
INVALID_ARGUMENT naming the field (and file and line), never a failed run.

Frames carry ``train_loss``, ``val_loss`` (at evaluation steps),
``tokens_per_s`` and ``learning_rate``, and the latest sample completion,
repeated in every frame until the next one (see the wire API's LMPayload).
"""

from __future__ import annotations

from collections.abc import Callable
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

# Typed fields of the wire API's LoraConfig -> the trainer's dotted config keys.
TYPED_FIELDS: dict[str, str] = {
    "model": "model.dir",
    "train_file": "data.train",
    "validation_file": "data.validation",
    "rank": "lora.rank",
    "alpha": "lora.alpha",
    "dropout": "lora.dropout",
    "max_seq_len": "data.max_seq_len",
    "batch_size": "data.batch_size",
    "learning_rate": "optim.lr",
    "sample_interval": "log.sample_interval",
    "eval_interval": "log.eval_interval",
}
# Typed fields that are paths the run reads, and what each must be.
_PATHS: dict[str, Literal["file", "dir"]] = {
    "model": "dir",
    "train_file": "file",
    "validation_file": "file",
}
_REQUIRED = {
    "model": "the base model's directory (Hugging Face layout)",
    "train_file": "the training examples (chat JSONL)",
}
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
}
# Trainer metric names -> the frame's (and Run.metrics') names.
_METRIC_NAMES = {"loss": "train_loss", "lr": "learning_rate", "tok_s": "tokens_per_s"}
DEFAULT_FRAME_INTERVAL = 1
"""A frame every step unless overridden: the metrics are on the host anyway, and every
sample completion and validation loss then reaches the frames."""


def _request_field(key: str) -> str:
    return f"run.lora.{key}" if key in TYPED_FIELDS else f"run.lora.overrides[{key}]"


def _trainer_overrides(spec: RunSpec, inputs: InputRoots) -> tuple[dict[str, Any], dict[str, str]]:
    """The run's config as the trainer's dotted overrides, and each one's request field."""
    overrides: dict[str, Any] = {}
    field_of: dict[str, str] = {}
    by_dotted = {dotted: key for key, dotted in TYPED_FIELDS.items()}
    for key, value in spec.config.items():
        request_field = _request_field(key)
        if key in TYPED_FIELDS:
            dotted = TYPED_FIELDS[key]
            if key in _PATHS:
                value = str(inputs.resolve(value, request_field, expect=_PATHS[key]))
        else:
            dotted = key
            if dotted in _SERVICE_KEYS:
                raise InvalidArgumentError(
                    request_field, f"is set by the service from {_SERVICE_KEYS[dotted]}"
                )
            if by_dotted.get(dotted) in _PATHS:
                raise InvalidArgumentError(
                    request_field,
                    f"is a path: set run.lora.{by_dotted[dotted]} (confined to the service's "
                    "input directories)",
                )
            if is_path_key(dotted):
                raise InvalidArgumentError(
                    request_field,
                    "is a path, which a client cannot set: a run writes only inside its own "
                    "directory and reads files only through run.lora's typed fields",
                )
        overrides[dotted] = value
        field_of[dotted] = request_field
    for key, what in _REQUIRED.items():
        if TYPED_FIELDS[key] not in overrides:
            raise InvalidArgumentError(f"run.lora.{key}", f"is required: {what}")
    policy = spec.policy
    if policy.keep_every or policy.compress:
        name = "keep_every" if policy.keep_every else "compress"
        raise InvalidArgumentError(
            f"run.checkpoint_policy.{name}",
            "is not supported by lora runs (they keep the newest keep_last checkpoints)",
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
    overrides.setdefault("log.frame_interval", DEFAULT_FRAME_INTERVAL)
    for dotted, source in _SERVICE_KEYS.items():
        field_of.setdefault(dotted, source if source.startswith("run.") else "run.lora")
    return overrides, field_of


def _check_inputs(config: Any, field_of: dict[str, str]) -> None:
    """Read what the worker will read first: config.json, the tokenizer and template, the data.

    Raises:
        InvalidArgumentError: naming the request field, and the file and line at fault.
    """
    from trainsvc_lm import LMError, ModelConfig, Tokenizer, read_chat_jsonl

    model_field = field_of["model.dir"]
    try:
        ModelConfig.from_file(config.model.dir)
        tokenizer = Tokenizer.from_dir(config.model.dir)
    except LMError as exc:
        raise InvalidArgumentError(model_field, str(exc)) from None
    for dotted in ("data.train", "data.validation"):
        section, name = dotted.split(".")
        path = getattr(getattr(config, section), name)
        if path is None:
            continue
        try:
            examples = read_chat_jsonl(path)
            first = examples[0]
            tokenizer.render_chat(first.messages, tools=first.tools)
        except LMError as exc:
            raise InvalidArgumentError(field_of[dotted], str(exc)) from None


class LoraKind:
    """Adapter factory for `trainsvc_lm.LoRATrainer`."""

    name = "lora"
    default_checkpoint_interval = 100
    resumes_newest_only = False

    def resolve_config(self, spec: RunSpec, inputs: InputRoots) -> dict[str, Any]:
        """Map the run's config onto the trainer's LMTrainConfig, validate it and its inputs."""
        from trainsvc_lm import ConfigError, LMTrainConfig

        overrides, field_of = _trainer_overrides(spec, inputs)
        try:
            config = LMTrainConfig().replace(overrides)
        except ConfigError as exc:
            raise trainer_field_error(exc, field_of, _request_field) from None
        _check_inputs(config, field_of)
        result: dict[str, Any] = config.to_dict()
        return result

    def create(
        self, config: dict[str, Any], checkpoint_dir: Path, on_frame: FrameSink
    ) -> LoraAdapter:
        """Build the trainer with its checkpoints in `checkpoint_dir`.

        Raises:
            RunInputError: the trainer refused its inputs (weights, data, memory budget).
        """
        from trainsvc_lm import LMError

        try:
            return LoraAdapter(config, checkpoint_dir, on_frame)
        except LMError as exc:
            raise RunInputError(str(exc)) from exc


class LoraAdapter:
    """Drives one `trainsvc_lm.LoRATrainer` for the worker."""

    def __init__(self, config: dict[str, Any], checkpoint_dir: Path, on_frame: FrameSink) -> None:
        import trainsvc_lm

        # The backend `train.backend` picks (MLX on an Apple GPU) where the library offers
        # the choice; the JAX trainer otherwise.
        make = getattr(trainsvc_lm, "create_trainer", None) or trainsvc_lm.LoRATrainer
        data = {section: dict(values) for section, values in config.items()}
        data["log"]["checkpoint_dir"] = str(checkpoint_dir)
        self._checkpoint_dir = checkpoint_dir
        self._on_frame = on_frame
        self._sample = LMFrame()
        self._val_loss: float | None = None
        self._trainer = make(trainsvc_lm.LMTrainConfig.from_dict(data), frame_callback=self._frame)

    def _frame(self, frame: Any) -> None:
        if frame.sample_completion is not None:
            self._sample = LMFrame(
                sample_prompt=str(frame.sample_prompt or ""),
                sample_completion=str(frame.sample_completion),
                sample_step=int(frame.step),
            )
        metrics = {k: float(v) for k, v in frame.metrics.items()}
        if "val_loss" in metrics:
            self._val_loss = metrics["val_loss"]
        self._on_frame(
            FrameData(
                step=int(frame.step), time=float(frame.wall_time), metrics=metrics, lm=self._sample
            )
        )

    @property
    def step(self) -> int:
        """Optimizer steps done."""
        return int(self._trainer.step_count)

    @property
    def metrics(self) -> dict[str, float]:
        """The last step's metrics under the frames' names, with the latest validation loss."""
        out = {_METRIC_NAMES.get(k, k): float(v) for k, v in self._trainer.last_metrics.items()}
        if "val_loss" in out:
            self._val_loss = out["val_loss"]
        elif self._val_loss is not None:
            out["val_loss"] = self._val_loss
        return out

    def train(self, n: int, should_stop: Callable[[], bool]) -> int:
        """Run up to `n` steps (the trainer saves periodic and final checkpoints itself)."""
        return int(self._trainer.run(n, should_stop))

    def save_checkpoint(self, *, emergency: bool = False) -> Path:
        """Save the exact current state (adapters, optimizer, RNG, data position)."""
        return Path(self._trainer.save_checkpoint(emergency=emergency))

    def restore(self, path: Path) -> int:
        """Restore from a checkpoint file.

        Raises:
            RunInputError: the checkpoint was trained with another value of a field that
                changes the trajectory (named), or holds other adapters (another rank or
                targets), or is not a LoRA trainer's: no restart can use it.
        """
        from trainsvc_checkpoint import IncompatibleCheckpointError
        from trainsvc_lm import ConfigError

        try:
            self._trainer.restore(path)
        except (ConfigError, IncompatibleCheckpointError) as exc:
            raise RunInputError(f"{path.name} does not fit this run: {exc}") from exc
        return self.step

    def checkpoint_files(self) -> list[Path]:
        """Checkpoint files in the run's directory (retention may have removed older ones)."""
        return checkpoint_files_in(self._checkpoint_dir)

    def close(self) -> None:
        """Wait for pending checkpoint writes."""
        self._trainer.close()


KIND = LoraKind()
