"""The LoRA training configuration: six validated sections, TOML files and dotted overrides.

:class:`LMTrainConfig` has the sections ``model``, ``data``, ``lora``, ``optim``,
``train`` and ``log``. :meth:`LMTrainConfig.from_dict` rejects unknown keys, wrong
types and out-of-range values with a :class:`~trainsvc_lm.ConfigError` naming the
dotted field (``optim.lr``); :meth:`LMTrainConfig.replace` applies dotted overrides
(``{"train.steps": 100}``), as the ``trainsvc-lm train`` flags and the service do.
No JAX import here.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from trainsvc_lm._errors import ConfigError
from trainsvc_lm._lora import LoraConfig


@dataclass(frozen=True)
class Rule:
    """What a field accepts: ``kind`` (int, float, bool, str) and a range or choices."""

    kind: str
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False

    def allowed(self) -> str:
        """The accepted values, in words."""
        if self.choices:
            text = "one of " + ", ".join(self.choices)
        elif self.low is not None:
            text = f"{self.kind} in [{self.low:g}, {self.high:g}]"
        else:
            text = self.kind
        return text + (" or none" if self.optional else "")

    def convert(self, dotted: str, value: Any) -> Any:
        """``value`` checked (and ints widened to floats); raises ConfigError naming ``dotted``."""
        if value is None:
            if self.optional:
                return None
            raise ConfigError(dotted, f"is required ({self.allowed()})")
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, int | float) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
        }[self.kind]
        if self.kind == "int" and isinstance(value, float) and value.is_integer():
            value, ok = int(value), True
        if not ok:
            raise ConfigError(dotted, f"must be {self.allowed()}, got {value!r}")
        if self.kind == "float":
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(dotted, f"must be finite, got {value!r}")
        if self.low is not None and self.high is not None and not self.low <= value <= self.high:
            raise ConfigError(dotted, f"must be {self.allowed()}, got {value!r}")
        if self.choices and value not in self.choices:
            raise ConfigError(dotted, f"must be {self.allowed()}, got {value!r}")
        if self.kind == "str" and not value:
            raise ConfigError(dotted, "must not be empty")
        return value


def _opt(default: Any, kind: str, help: str, *bounds: float, **kw: Any) -> Any:
    low, high = bounds if bounds else (None, None)
    rule = Rule(kind, help, low, high, **kw)
    return field(default=default, metadata={"rule": rule})


DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
BIG = 10**9


@dataclass(frozen=True)
class ModelSection:
    """The base model: a Hugging Face model directory on disk."""

    dir: str | None = _opt(None, "str", "the base model directory", optional=True)
    dtype: str = _opt(
        "auto", "str", "base weights' dtype (auto: the file's)", choices=DTYPE_CHOICES
    )


@dataclass(frozen=True)
class DataSection:
    """Chat JSONL files and how they become batches."""

    train: str | None = _opt(None, "str", "training chat JSONL", optional=True)
    validation: str | None = _opt(None, "str", "validation chat JSONL", optional=True)
    max_seq_len: int = _opt(1024, "int", "tokens per sequence", 16, 1 << 20)
    batch_size: int = _opt(4, "int", "sequences per micro-batch", 1, 65536)
    packing: bool = _opt(True, "bool", "pack several examples into one sequence")
    truncation: str = _opt(
        "truncate",
        "str",
        "over-long examples: cut and count, or refuse",
        choices=("truncate", "refuse"),
    )


@dataclass(frozen=True)
class OptimSection:
    """AdamW with linear warm-up and cosine decay to ``lr * min_lr_ratio``."""

    lr: float = _opt(2e-4, "float", "peak learning rate", 1e-8, 1.0)
    warmup_steps: int = _opt(20, "int", "linear warm-up steps", 0, BIG)
    min_lr_ratio: float = _opt(0.1, "float", "final learning rate / peak", 0.0, 1.0)
    weight_decay: float = _opt(0.0, "float", "AdamW weight decay", 0.0, 1.0)
    beta1: float = _opt(0.9, "float", "AdamW beta1", 0.0, 0.9999)
    beta2: float = _opt(0.999, "float", "AdamW beta2", 0.0, 0.99999)
    grad_clip: float = _opt(1.0, "float", "global gradient-norm clip (0 = off)", 0.0, 1e6)
    grad_accum: int = _opt(1, "int", "micro-batches per optimizer step", 1, 4096)


@dataclass(frozen=True)
class TrainSection:
    """Length, seed, and how each step computes."""

    steps: int = _opt(1000, "int", "optimizer steps to run", 1, BIG)
    seed: int = _opt(0, "int", "PRNG seed (adapter init, dropout, data order)", 0, 2**31 - 1)
    remat: bool = _opt(False, "bool", "recompute each layer's activations in the backward pass")
    compute_dtype: str = _opt(
        "auto",
        "str",
        "activation dtype (auto: bfloat16 on GPU, float32 on CPU)",
        choices=DTYPE_CHOICES,
    )
    platform: str = _opt(
        "auto", "str", "memory budget to check against", choices=("auto", "cpu", "h100", "m4")
    )
    backend: str = _opt(
        "auto",
        "str",
        "array library that trains (auto: mlx on Apple Silicon with Metal, else jax)",
        choices=("auto", "jax", "mlx"),
    )
    resume_from: str | None = _opt(
        None, "str", "checkpoint file, or 'latest' in log.checkpoint_dir", optional=True
    )


@dataclass(frozen=True)
class LogSection:
    """Checkpoints, console lines, validation, samples, frames and W&B."""

    checkpoint_dir: str = _opt("./lm-run", "str", "run directory (checkpoints, metrics.jsonl)")
    save_interval: int = _opt(200, "int", "steps between checkpoints (0 = only the final)", 0, BIG)
    keep_last: int = _opt(3, "int", "periodic checkpoints kept", 1, 10_000)
    log_interval: int = _opt(10, "int", "steps between console lines", 1, BIG)
    frame_interval: int = _opt(10, "int", "steps between frames (0 = none)", 0, BIG)
    eval_interval: int = _opt(100, "int", "steps between validation losses (0 = none)", 0, BIG)
    eval_batches: int = _opt(8, "int", "validation batches per evaluation", 1, BIG)
    sample_interval: int = _opt(100, "int", "steps between sample completions (0 = none)", 0, BIG)
    sample_prompt: str | None = _opt(
        None, "str", "user message sampled (default: the first validation prompt)", optional=True
    )
    sample_max_tokens: int = _opt(64, "int", "tokens per sample completion", 1, 8192)
    name: str = _opt("lora", "str", "run name prefix: <name>-<platform>-<date>")
    wandb: bool = _opt(False, "bool", "log to Weights & Biases (needs the wandb extra)")
    wandb_mode: str = _opt("offline", "str", "W&B mode", choices=("offline", "online", "disabled"))
    wandb_project: str = _opt("trainsvc-lm", "str", "W&B project")


_SECTIONS: dict[str, type[Any]] = {
    "model": ModelSection,
    "data": DataSection,
    "optim": OptimSection,
    "train": TrainSection,
    "log": LogSection,
}
SECTIONS = ("model", "data", "lora", "optim", "train", "log")


def _build(name: str, cls: type[Any], table: Any) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(name, f"must be a table of fields, got {type(table).__name__}")
    known = {f.name: f for f in fields(cls)}
    extra = sorted(set(table) - set(known))
    if extra:
        raise ConfigError(f"{name}.{extra[0]}", f"unknown field; allowed: {', '.join(known)}")
    return cls(
        **{
            key: f.metadata["rule"].convert(f"{name}.{key}", table.get(key, f.default))
            for key, f in known.items()
        }
    )


@dataclass(frozen=True)
class LMTrainConfig:
    """A whole LoRA fine-tuning run. Build it with :meth:`from_dict` or :meth:`from_toml`."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    log: LogSection = field(default_factory=LogSection)

    #: Fields a resumed run may change; every other field must match the checkpoint's.
    # train.backend: the backend that wrote a state is checked from the state itself.
    RESUMABLE: ClassVar[frozenset[str]] = frozenset(
        {"train.steps", "train.resume_from", "train.platform", "train.backend", "data.validation"}
    )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LMTrainConfig:
        """Validates nested tables (``{"optim": {"lr": 1e-4}}``); missing fields default.

        Raises:
            ConfigError: an unknown section or field, a wrong type or a value out of range.
        """
        if not isinstance(data, Mapping):
            raise ConfigError("config", f"must be a mapping of sections, got {type(data).__name__}")
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(unknown[0], f"unknown section; allowed: {', '.join(SECTIONS)}")
        built = {name: _build(name, cls_, data.get(name, {})) for name, cls_ in _SECTIONS.items()}
        lora = data.get("lora", {})
        if not isinstance(lora, Mapping):
            raise ConfigError("lora", f"must be a table of fields, got {type(lora).__name__}")
        return cls(lora=LoraConfig.from_dict(lora), **built)

    @classmethod
    def from_toml(cls, path: str | Path) -> LMTrainConfig:
        """Reads and validates a TOML file of ``[model]`` ``[data]`` ... tables."""
        return cls.from_dict(load_toml(path))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested JSON-safe tables that :meth:`from_dict` turns back into an equal config."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}
        out["lora"] = self.lora.to_dict()
        return {name: out[name] for name in SECTIONS}

    def replace(self, overrides: Mapping[str, Any]) -> LMTrainConfig:
        """A validated copy with dotted overrides applied (``{"optim.lr": 1e-4}``)."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            section, _, name = dotted.partition(".")
            if section not in data or not name:
                raise ConfigError(dotted, f"unknown field; sections are {', '.join(SECTIONS)}")
            data[section][name] = value
        return LMTrainConfig.from_dict(data)

    def mismatch(self, other: LMTrainConfig) -> str | None:
        """The first dotted field outside :attr:`RESUMABLE` and ``log.*`` where the configs differ."""
        mine, theirs = self.to_dict(), other.to_dict()
        for section in SECTIONS[:-1]:
            for name, value in mine[section].items():
                dotted = f"{section}.{name}"
                if dotted not in self.RESUMABLE and theirs[section][name] != value:
                    return dotted
        return None

    def require_inputs(self) -> None:
        """Raises ConfigError unless ``model.dir`` and ``data.train`` are set."""
        if self.model.dir is None:
            raise ConfigError("model.dir", "is required: the base model directory (--model)")
        if self.data.train is None:
            raise ConfigError("data.train", "is required: the training JSONL file (--train)")


def field_rules() -> dict[str, tuple[Any, Rule]]:
    """Every dotted field of the plain sections with its default and :class:`Rule`."""
    return {
        f"{name}.{f.name}": (f.default, f.metadata["rule"])
        for name, cls in _SECTIONS.items()
        for f in fields(cls)
    }


def load_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's tables; ConfigError (field ``config``) when missing or malformed."""
    try:
        with Path(path).open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
