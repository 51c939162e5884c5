"""Typed, validated trainer configuration.

The configuration is a frozen dataclass of four sections (``env``, ``policy``,
``train``, ``log``). Every field has a declared range; :meth:`Config.from_dict`
rejects unknown keys, wrong types and out-of-range values with a
:class:`ConfigError` that names the dotted field (``train.total_steps``) and
what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

SECTIONS = ("env", "policy", "train", "log")


class ConfigError(ValueError):
    """An invalid configuration value.

    Attributes:
        field: the dotted field name, e.g. ``train.total_steps`` (or a section name).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Spec:
    """A field's allowed values: a numeric range, a set of choices, or nullable text."""

    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    help: str = ""

    def describe(self) -> str:
        """The allowed values, in words."""
        null = " or null" if self.nullable else ""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices) + null
        if self.low is not None and self.high is not None:
            return f"in [{_fmt(self.low)}, {_fmt(self.high)}]{null}"
        return "any string" + null


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def _f(
    default: Any, help: str, low: float | None = None, high: float | None = None, **kw: Any
) -> Any:
    return field(default=default, metadata={"spec": Spec(low, high, help=help, **kw)})


@dataclass(frozen=True)
class EnvConfig:
    """The emergence environment: N agents on an H x W torus with a shared field."""

    height: int = _f(16, "field height (cells)", 4, 1024)
    width: int = _f(16, "field width (cells)", 4, 1024)
    n_agents: int = _f(8, "agents per environment", 2, 1024)
    n_envs: int = _f(8, "parallel environments (vmapped batch)", 1, 4096)
    patch_radius: int = _f(1, "radius of the sensed square patch", 1, 4)
    episode_length: int = _f(64, "environment steps per episode", 1, 100_000)
    deposit: float = _f(1.0, "field added per agent per step", 0.0, 100.0)
    diffusion: float = _f(0.2, "fraction of the field spread to neighbours per step", 0.0, 1.0)
    evaporation: float = _f(0.05, "fraction of the field lost per step", 0.0, 1.0)
    n_patches: int = _f(3, "resource patches", 1, 256)
    patch_size: float = _f(1.5, "resource patch radius (cells, Gaussian sigma)", 0.1, 64.0)
    regrow: float = _f(0.05, "fraction of a cell's missing resource regrown per step", 0.0, 1.0)
    harvest: float = _f(0.5, "fraction of a cell's resource harvested per step", 0.0, 1.0)
    coop_bonus: float = _f(1.0, "extra reward factor when a neighbour also harvests", 0.0, 100.0)
    coop_radius: int = _f(1, "Chebyshev radius of the cooperation bonus", 0, 8)
    type_quota: float = _f(
        0.5,
        "share of the agents a resource type pays in full for (above it, pay is shared)",
        0.05,
        1.0,
    )
    skill_rate: float = _f(
        0.1, "per-step rate at which an agent's tool skill follows its use", 0.0, 1.0
    )


@dataclass(frozen=True)
class PolicyConfig:
    """Shared policy MLP plus per-agent parameters."""

    hidden: int = _f(32, "hidden units of the shared MLP", 4, 4096)
    agent_embedding: bool = _f(
        True, "per-agent hidden offset, move bias and tool logits (agent_params)"
    )
    role_scale: float = _f(
        10.0, "scale of the per-agent tool logits (how fast roles form)", 0.0, 100.0
    )


@dataclass(frozen=True)
class TrainConfig:
    """The learner: REINFORCE with a learned baseline and optax Adam."""

    seed: int = _f(0, "PRNG seed", 0, 2**31 - 1)
    total_steps: int = _f(1000, "policy updates to run", 1, 10**9)
    rollout_length: int = _f(16, "environment steps per policy update", 1, 4096)
    learning_rate: float = _f(3e-3, "Adam learning rate", 1e-7, 1.0)
    gamma: float = _f(0.95, "discount factor", 0.0, 1.0)
    entropy_coef: float = _f(0.01, "entropy bonus weight", 0.0, 10.0)
    value_coef: float = _f(0.5, "baseline (value) loss weight", 0.0, 100.0)
    max_grad_norm: float = _f(1.0, "global gradient-norm clip", 1e-6, 1e6)
    resume_from: str | None = _f(
        None, "checkpoint path, or 'latest' in log.checkpoint_dir", nullable=True
    )
    compile_cache_dir: str | None = _f(
        None, "JAX persistent compilation cache (default: user cache dir)", nullable=True
    )


@dataclass(frozen=True)
class LogConfig:
    """Checkpoints, frames, metrics files, progress and Weights & Biases."""

    checkpoint_dir: str = _f("./checkpoints", "checkpoint directory")
    save_interval: int = _f(200, "steps between checkpoints (0 = only the final one)", 0, 10**9)
    keep_last: int = _f(5, "periodic checkpoints kept", 1, 10_000)
    keep_every: int | None = _f(
        None, "also keep every checkpoint whose step is a multiple of this", 1, 10**9, nullable=True
    )
    compression: str | None = _f(
        None, "checkpoint compression (.safetensors.zst)", choices=("zstd",), nullable=True
    )
    frame_interval: int = _f(10, "steps between frames (0 = no frames)", 0, 10**9)
    frame_max_cells: int = _f(4096, "field cells per frame before downsampling", 16, 1 << 24)
    frame_dtype: str = _f("float32", "dtype of the frame's field", choices=("float32", "uint8"))
    metrics_interval: int = _f(1, "steps between logged metric records", 1, 10**9)
    metrics_file: str | None = _f(
        None, "JSONL metrics file (default: <checkpoint_dir>/metrics.jsonl)", nullable=True
    )
    progress: bool = _f(True, "console progress bar")
    wandb: bool = _f(False, "log to Weights & Biases (needs the 'wandb' extra)")
    wandb_mode: str = _f("offline", "W&B mode", choices=("offline", "online", "disabled"))
    wandb_project: str = _f("trainsvc", "W&B project")
    wandb_dir: str | None = _f(None, "W&B files (default: <checkpoint_dir>)", nullable=True)


_SECTION_TYPES: dict[str, type[Any]] = {
    "env": EnvConfig,
    "policy": PolicyConfig,
    "train": TrainConfig,
    "log": LogConfig,
}


@dataclass(frozen=True)
class Config:
    """The whole trainer configuration. Build it with :meth:`from_dict` to validate it."""

    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    #: Fields that may differ between a checkpoint and the config that resumes it.
    RESUMABLE_OVERRIDES: ClassVar[frozenset[str]] = frozenset(
        {"train.total_steps", "train.resume_from", "train.compile_cache_dir"}
    )

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> Config:
        """Validates a nested mapping (``{"train": {"total_steps": 10}}``); missing fields default.

        Raises:
            ConfigError: an unknown section or field, a wrong type or an out-of-range value.
        """
        if not isinstance(mapping, Mapping):
            raise ConfigError(
                "config", f"must be a mapping of sections, got {type(mapping).__name__}"
            )
        unknown = sorted(set(mapping) - set(SECTIONS))
        if unknown:
            raise ConfigError(unknown[0], f"unknown section; allowed: {', '.join(SECTIONS)}")
        sections: dict[str, Any] = {}
        for name, section_type in _SECTION_TYPES.items():
            raw = mapping.get(name, {})
            if not isinstance(raw, Mapping):
                raise ConfigError(name, f"must be a table of fields, got {type(raw).__name__}")
            sections[name] = _build_section(name, section_type, raw)
        return cls(**sections)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """A nested JSON-safe dict that :meth:`from_dict` turns back into an equal config."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def replace(self, overrides: Mapping[str, Any]) -> Config:
        """A validated copy with dotted overrides applied (``{"train.total_steps": 5}``)."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            section, _, name = dotted.partition(".")
            if section not in data or not name:
                raise ConfigError(dotted, f"unknown field; sections are {', '.join(SECTIONS)}")
            data[section][name] = value
        return Config.from_dict(data)

    def trajectory_mismatch(self, other: Config) -> str | None:
        """The first dotted field, other than the resumable overrides, where the configs differ."""
        mine, theirs = self.to_dict(), other.to_dict()
        for section in ("env", "policy", "train"):
            for name, value in mine[section].items():
                dotted = f"{section}.{name}"
                if dotted not in self.RESUMABLE_OVERRIDES and theirs[section][name] != value:
                    return dotted
        return None


def field_specs() -> dict[str, tuple[type[Any] | str, Any, Spec]]:
    """Every dotted field with its type, default and :class:`Spec` (for help texts and docs)."""
    out: dict[str, tuple[type[Any] | str, Any, Spec]] = {}
    for section, section_type in _SECTION_TYPES.items():
        for f in fields(section_type):
            out[f"{section}.{f.name}"] = (f.type, f.default, f.metadata["spec"])
    return out


def _build_section(section: str, section_type: type[Any], raw: Mapping[str, Any]) -> Any:
    known = {f.name: f for f in fields(section_type)}
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"{section}.{key}", f"unknown field; allowed: {', '.join(sorted(known))}"
            )
    values: dict[str, Any] = {}
    for name, f in known.items():
        dotted = f"{section}.{name}"
        value = raw.get(name, f.default)
        values[name] = _check(dotted, str(f.type), value, f.metadata["spec"])
    return section_type(**values)


def _check(dotted: str, type_name: str, value: Any, spec: Spec) -> Any:
    allowed = spec.describe()
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(dotted, f"must not be null; allowed: {allowed}")
    type_name = type_name.removesuffix(" | None")
    if type_name == "bool":
        if not isinstance(value, bool):
            raise ConfigError(dotted, f"must be true or false, got {value!r}")
        return value
    if type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(dotted, f"must be an integer {allowed}, got {value!r}")
        _check_range(dotted, value, spec)
        return value
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(dotted, f"must be a number {allowed}, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(dotted, f"must be a finite number {allowed}, got {value!r}")
        _check_range(dotted, value, spec)
        return value
    if not isinstance(value, str):
        raise ConfigError(dotted, f"must be a string ({allowed}), got {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(dotted, f"must be {allowed}, got {value!r}")
    if not value:
        raise ConfigError(dotted, "must not be empty")
    return value


def _check_range(dotted: str, value: float, spec: Spec) -> None:
    assert spec.low is not None and spec.high is not None
    if not spec.low <= value <= spec.high:
        raise ConfigError(dotted, f"must be {spec.describe()}, got {value!r}")
