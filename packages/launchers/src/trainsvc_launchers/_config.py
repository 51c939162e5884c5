"""The launch config: what run to start, where, and what it needs.

A launch config is a TOML (or JSON) file::

    kind = "emergence"          # or "othello", "lora"
    run_id = "demo"             # 1-63 of [a-z0-9-], starting with a letter
    seed = 0
    step_budget = 20000

    [checkpoint]
    interval_steps = 500
    keep_last = 3

    [resources]
    checkpoint_mb = 50          # size of one checkpoint, for the disk check
    min_ram_gb = 4

    [emergence]                 # the trainer's own config fields
    num_agents = 8

A ``lora`` run's section names its model and data (see ``_lm``); relative
paths there are relative to the config file's folder.

Every bad field is reported with its name and what is allowed; the trainer's
section is validated by the trainer's own config class when it is installed.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainsvc_launchers._files import ENCODING

__all__ = ["ConfigError", "FieldError", "LaunchConfig", "load_launch_config"]

KINDS = ("emergence", "othello", "lora")
_RUN_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_TOP_KEYS = {"kind", "run_id", "seed", "step_budget", "checkpoint", "resources", "kaggle", *KINDS}


@dataclass(frozen=True)
class FieldError:
    """One invalid field: its dotted name and what is allowed."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ConfigError(ValueError):
    """A launch config with one or more invalid fields."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


@dataclass
class LaunchConfig:
    """A validated launch config (see the module docstring for the file format)."""

    kind: str = "emergence"
    run_id: str = "trainsvc-run"
    seed: int = 0
    step_budget: int = 10_000
    interval_steps: int = 1000
    keep_last: int = 3
    checkpoint_mb: float = 64.0
    min_ram_gb: float = 2.0
    trainer: dict[str, Any] = field(default_factory=dict)
    kaggle: dict[str, Any] = field(default_factory=dict)

    def disk_needed_bytes(self) -> int:
        """Free disk the run needs: retained checkpoints, two in flight, and logs."""
        return int((self.keep_last + 2) * self.checkpoint_mb * 2**20 + 256 * 2**20)

    def to_dict(self) -> dict[str, Any]:
        """The config in its file form (the inverse of :func:`parse_launch_config`)."""
        return {
            "kind": self.kind,
            "run_id": self.run_id,
            "seed": self.seed,
            "step_budget": self.step_budget,
            "checkpoint": {"interval_steps": self.interval_steps, "keep_last": self.keep_last},
            "resources": {"checkpoint_mb": self.checkpoint_mb, "min_ram_gb": self.min_ram_gb},
            self.kind: dict(self.trainer),
            **({"kaggle": dict(self.kaggle)} if self.kaggle else {}),
        }


def _int_field(
    raw: dict[str, Any], key: str, name: str, lo: int, hi: int, errors: list[FieldError]
) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        errors.append(FieldError(name, f"must be an integer in [{lo}, {hi}], got {value!r}"))
        return None
    return value


def _float_field(
    raw: dict[str, Any], key: str, name: str, lo: float, hi: float, errors: list[FieldError]
) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        errors.append(FieldError(name, f"must be a number in [{lo}, {hi}], got {value!r}"))
        return None
    return float(value)


def _section(raw: dict[str, Any], key: str, errors: list[FieldError]) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        errors.append(FieldError(key, f"must be a table, got {type(value).__name__}"))
        return {}
    return value


def parse_launch_config(raw: dict[str, Any]) -> LaunchConfig:
    """Validate a launch config's raw mapping.

    Raises:
        ConfigError: naming every bad field and what is allowed.
    """
    errors: list[FieldError] = []
    cfg = LaunchConfig()
    for key in sorted(set(raw) - _TOP_KEYS):
        errors.append(FieldError(key, f"unknown field; allowed: {', '.join(sorted(_TOP_KEYS))}"))
    kind = raw.get("kind", cfg.kind)
    if kind not in KINDS:
        errors.append(FieldError("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}"))
    else:
        cfg.kind = kind
    run_id = raw.get("run_id", cfg.run_id)
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        errors.append(
            FieldError(
                "run_id", f"must be 1-63 of [a-z0-9-] starting with a letter, got {run_id!r}"
            )
        )
    else:
        cfg.run_id = run_id
    if (seed := _int_field(raw, "seed", "seed", 0, 2**63 - 1, errors)) is not None:
        cfg.seed = seed
    budget = _int_field(raw, "step_budget", "step_budget", 1, 10**12, errors)
    if budget is not None:
        cfg.step_budget = budget
    ckpt = _section(raw, "checkpoint", errors)
    for key in sorted(set(ckpt) - {"interval_steps", "keep_last"}):
        errors.append(
            FieldError(f"checkpoint.{key}", "unknown field; allowed: interval_steps, keep_last")
        )
    interval = _int_field(ckpt, "interval_steps", "checkpoint.interval_steps", 1, 10**9, errors)
    if interval is not None:
        cfg.interval_steps = interval
    if (keep := _int_field(ckpt, "keep_last", "checkpoint.keep_last", 1, 1000, errors)) is not None:
        cfg.keep_last = keep
    res = _section(raw, "resources", errors)
    for key in sorted(set(res) - {"checkpoint_mb", "min_ram_gb"}):
        errors.append(
            FieldError(f"resources.{key}", "unknown field; allowed: checkpoint_mb, min_ram_gb")
        )
    mb = _float_field(res, "checkpoint_mb", "resources.checkpoint_mb", 0.0, 1e6, errors)
    if mb is not None:
        cfg.checkpoint_mb = mb
    ram = _float_field(res, "min_ram_gb", "resources.min_ram_gb", 0.0, 1e5, errors)
    if ram is not None:
        cfg.min_ram_gb = ram
    for other in KINDS:
        if other != cfg.kind and other in raw:
            errors.append(FieldError(other, f"section does not match kind {cfg.kind!r}"))
    cfg.trainer = _section(raw, cfg.kind, errors)
    cfg.kaggle = _section(raw, "kaggle", errors)
    errors.extend(validate_trainer_section(cfg.kind, cfg.trainer))
    if errors:
        raise ConfigError(errors)
    return cfg


def validate_trainer_section(kind: str, section: dict[str, Any]) -> list[FieldError]:
    """Validate the trainer's section with the trainer's own config class.

    Returns an empty list when the trainer package is not installed here (the
    service validates it again on ``CreateRun``). A ``lora`` section is checked
    on disk (model directory, data files) and its LoRA spec by trainsvc-lm.
    """
    if kind == "lora":
        from trainsvc_launchers._lm import validate_lora

        return [FieldError(f"lora.{name}", msg) for name, msg in validate_lora(section)]
    if kind == "othello" and section:
        from trainsvc_launchers._trainer_bridge import validate_othello

        return [FieldError(f"othello.{name}", msg) for name, msg in validate_othello(section)]
    if kind != "emergence" or not section:
        return []
    try:
        from trainsvc_launchers._trainer_bridge import validate_emergence
    except ImportError:  # pragma: no cover - the bridge itself always imports
        return []
    return [FieldError(f"{kind}.{name}", msg) for name, msg in validate_emergence(section)]


def load_launch_config(path: Path) -> LaunchConfig:
    """Read and validate a launch config from a ``.toml`` or ``.json`` file.

    Raises:
        ConfigError: the file is unreadable or has bad fields.
    """
    try:
        text = path.read_text(encoding=ENCODING)
    except OSError as exc:
        raise ConfigError([FieldError(str(path), f"cannot read: {exc.strerror}")]) from exc
    try:
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            [FieldError(str(path), f"not valid {path.suffix[1:] or 'TOML'}: {exc}")]
        ) from exc
    if not isinstance(raw, dict):
        raise ConfigError([FieldError(str(path), "must hold a table/object at the top")])
    if raw.get("kind") == "lora" and isinstance(raw.get("lora"), dict):
        from trainsvc_launchers._lm import absolute_paths

        raw["lora"] = absolute_paths(raw["lora"], path.parent)
    return parse_launch_config(raw)
