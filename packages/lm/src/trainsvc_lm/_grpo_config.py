"""The GRPO run configuration: validated sections, dotted overrides, resumable fields.

:class:`GRPOConfig` has the sections ``model``, ``data``, ``grpo``, ``lora``,
``optim``, ``train`` and ``log``. ``optim`` and ``log`` are the LoRA trainer's
sections (with GRPO defaults); every field goes through the same
:class:`~trainsvc_lm._train_config.Rule` checks, so a bad value is a
:class:`~trainsvc_lm.ConfigError` naming the dotted field. No JAX import here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from trainsvc_lm._errors import ConfigError
from trainsvc_lm._lora import LoraConfig
from trainsvc_lm._tasks import TASKS
from trainsvc_lm._train_config import (
    BIG,
    DTYPE_CHOICES,
    LogSection,
    OptimSection,
    _build,
    _opt,
    load_toml,
)


@dataclass(frozen=True)
class GRPOModelSection:
    """The policy: a Hugging Face model directory, or a tiny digit model trained from scratch."""

    dir: str | None = _opt(
        None, "str", "base model directory (none: a digit model from scratch)", optional=True
    )
    dtype: str = _opt("auto", "str", "weights' dtype (auto: the file's)", choices=DTYPE_CHOICES)
    hidden_size: int = _opt(64, "int", "from scratch: hidden size", 8, 4096)
    num_layers: int = _opt(2, "int", "from scratch: decoder layers", 1, 64)
    num_heads: int = _opt(4, "int", "from scratch: attention heads", 1, 64)
    intermediate_size: int = _opt(128, "int", "from scratch: MLP width", 8, 16384)


@dataclass(frozen=True)
class GRPODataSection:
    """Where the groups come from: a shipped task (online) or recorded groups (offline)."""

    task: str | None = _opt(
        "sort4", "str", "shipped task sampled online", optional=True, choices=tuple(TASKS)
    )
    offline_file: str | None = _opt(
        None, "str", "recorded groups (ART JSONL or Parquet) instead of a task", optional=True
    )
    reward: str = _opt(
        "verifiable",
        "str",
        "online reward: the task's verifiable reward, or a group judge given by the caller",
        choices=("verifiable", "judge"),
    )
    eval_prompts: int = _opt(256, "int", "held-out prompts in each evaluation", 1, 100_000)


@dataclass(frozen=True)
class GRPOSection:
    """The GRPO objective and its rollouts."""

    group_size: int = _opt(16, "int", "completions per prompt (G)", 2, 1024)
    prompts_per_step: int = _opt(32, "int", "prompts (groups) per optimizer step", 1, 65536)
    epsilon: float = _opt(0.2, "float", "clip range below (and above) ratio 1", 0.0, 10.0)
    epsilon_high: float | None = _opt(
        None, "float", "clip range above ratio 1 (DAPO; none: epsilon)", 0.0, 10.0, optional=True
    )
    beta: float = _opt(0.0, "float", "weight of the k3 KL to the reference policy", 0.0, 100.0)
    loss_norm: str = _opt(
        "token",
        "str",
        "token: mean over all completion tokens (DAPO); sequence: per-sequence mean first",
        choices=("token", "sequence"),
    )
    updates_per_batch: int = _opt(1, "int", "optimizer updates on each sampled batch", 1, 64)
    temperature: float = _opt(
        1.5, "float", "rollout temperature (the loss's log-probs are at 1)", 0.05, 10.0
    )
    max_new_tokens: int | None = _opt(
        None, "int", "tokens per completion (none: the task's)", 1, 8192, optional=True
    )
    std_eps: float = _opt(1e-4, "float", "eps in (r - mean) / (std + eps)", 0.0, 1.0)


@dataclass(frozen=True)
class GRPOTrainSection:
    """Length, seed, what is trained, and how each step computes."""

    steps: int = _opt(300, "int", "optimizer steps to run", 1, BIG)
    seed: int = _opt(0, "int", "PRNG seed (init, prompts, sampling)", 0, 2**31 - 1)
    mode: str = _opt("full", "str", "full fine-tuning or LoRA adapters", choices=("full", "lora"))
    compute_dtype: str = _opt(
        "auto", "str", "activation dtype (auto: the weights')", choices=DTYPE_CHOICES
    )
    resume_from: str | None = _opt(
        None, "str", "checkpoint file, or 'latest' in log.checkpoint_dir", optional=True
    )


_SECTIONS: dict[str, type[Any]] = {
    "model": GRPOModelSection,
    "data": GRPODataSection,
    "grpo": GRPOSection,
    "optim": OptimSection,
    "train": GRPOTrainSection,
    "log": LogSection,
}
SECTIONS = ("model", "data", "grpo", "lora", "optim", "train", "log")

# Section defaults that differ from the classes' (the LoRA trainer's optim and log).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "optim": {"lr": 2e-3, "warmup_steps": 0, "min_lr_ratio": 1.0, "beta2": 0.99},
    "log": {
        "checkpoint_dir": "./grpo-run",
        "name": "grpo",
        "eval_interval": 25,
        "sample_interval": 10,
        "frame_interval": 1,
        "log_interval": 10,
    },
}


def _section(name: str, table: Any) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(name, f"must be a table of fields, got {type(table).__name__}")
    return _build(name, _SECTIONS[name], {**_DEFAULTS.get(name, {}), **table})


@dataclass(frozen=True)
class GRPOConfig:
    """A whole GRPO run. Build it with :meth:`from_dict` or :meth:`from_toml`."""

    model: GRPOModelSection = field(default_factory=GRPOModelSection)
    data: GRPODataSection = field(default_factory=GRPODataSection)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimSection = field(default_factory=lambda: _section("optim", {}))
    train: GRPOTrainSection = field(default_factory=GRPOTrainSection)
    log: LogSection = field(default_factory=lambda: _section("log", {}))

    #: Fields a resumed run may change; every other field (but ``log.*``) must match.
    RESUMABLE: ClassVar[frozenset[str]] = frozenset(
        {"train.steps", "train.resume_from", "data.eval_prompts"}
    )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GRPOConfig:
        """Validates nested tables (``{"grpo": {"group_size": 16}}``); missing fields default.

        Raises:
            ConfigError: an unknown section or field, a wrong type, a value out of range,
                or a task and an offline file both (or neither) given.
        """
        if not isinstance(data, Mapping):
            raise ConfigError("config", f"must be a mapping of sections, got {type(data).__name__}")
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(unknown[0], f"unknown section; allowed: {', '.join(SECTIONS)}")
        built = {name: _section(name, data.get(name, {})) for name in _SECTIONS}
        lora = data.get("lora", {})
        if not isinstance(lora, Mapping):
            raise ConfigError("lora", f"must be a table of fields, got {type(lora).__name__}")
        config = cls(lora=LoraConfig.from_dict(lora), **built)
        config._check()
        return config

    def _check(self) -> None:
        d = self.data
        if (d.task is None) == (d.offline_file is None):
            raise ConfigError(
                "data.task",
                "give exactly one source: data.task (online) or data.offline_file (offline); "
                "set the other to none",
            )
        if d.offline_file is not None and d.reward != "verifiable":
            raise ConfigError("data.reward", "offline groups carry their (judged) rewards")
        if self.model.dir is None and self.train.mode == "lora":
            raise ConfigError("train.mode", "lora needs a trained base model (model.dir)")

    @classmethod
    def from_toml(cls, path: str | Path) -> GRPOConfig:
        """Reads and validates a TOML file of ``[model]`` ``[grpo]`` ... tables."""
        return cls.from_dict(load_toml(path))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested JSON-safe tables that :meth:`from_dict` turns back into an equal config."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}
        out["lora"] = self.lora.to_dict()
        return {name: out[name] for name in SECTIONS}

    def replace(self, overrides: Mapping[str, Any]) -> GRPOConfig:
        """A validated copy with dotted overrides applied (``{"grpo.beta": 0.04}``)."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            section, _, name = dotted.partition(".")
            if section not in data or not name:
                raise ConfigError(dotted, f"unknown field; sections are {', '.join(SECTIONS)}")
            data[section][name] = value
        return GRPOConfig.from_dict(data)

    def mismatch(self, other: GRPOConfig) -> str | None:
        """The first dotted field outside :attr:`RESUMABLE` and ``log.*`` where the configs differ."""
        mine, theirs = self.to_dict(), other.to_dict()
        for section in SECTIONS[:-1]:
            for name, value in mine[section].items():
                dotted = f"{section}.{name}"
                if dotted not in self.RESUMABLE and theirs[section][name] != value:
                    return dotted
        return None


def grpo_field_rules() -> dict[str, tuple[Any, Any]]:
    """Every dotted field of the plain sections with its default and rule."""
    defaults = GRPOConfig().to_dict()
    return {
        f"{name}.{f.name}": (defaults[name][f.name], f.metadata["rule"])
        for name, cls in _SECTIONS.items()
        for f in fields(cls)
    }
