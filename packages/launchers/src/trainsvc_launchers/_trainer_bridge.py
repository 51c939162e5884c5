"""The launchers' one contact point with the trainer package (optional at run time).

The trainer (``trainsvc_trainer``, JAX) is heavy and may be absent on the
machine that only submits Kaggle kernels, so it is imported lazily here.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["flatten", "trainer_available", "validate_emergence"]


def trainer_available() -> bool:
    """Whether the trainer package can be imported here."""
    try:
        importlib.import_module("trainsvc_trainer")
    except ImportError:
        return False
    return True


def flatten(section: dict[str, Any]) -> dict[str, Any]:
    """``{"train": {"total_steps": 5}}`` → ``{"train.total_steps": 5}``."""
    out: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, dict):
            for name, inner in value.items():
                out[f"{key}.{name}"] = inner
        else:
            out[key] = value
    return out


def validate_emergence(section: dict[str, Any]) -> list[tuple[str, str]]:
    """Validate an emergence config section with the trainer's own config class.

    The section is the trainer's nested config (``env``, ``policy``, ``train``,
    ``log`` tables). Each field is checked on its own so that every bad field
    is reported, not just the first.

    Returns:
        ``(dotted field, message)`` pairs; empty when valid or when the trainer
        is not installed here (the service validates again on ``CreateRun``).
    """
    try:
        trainer = importlib.import_module("trainsvc_trainer")
    except ImportError:
        return []
    config_cls = getattr(trainer, "Config", None)
    error_cls = getattr(trainer, "ConfigError", None)
    if config_cls is None or error_cls is None:
        return []
    errors: list[tuple[str, str]] = []
    for dotted, value in flatten(section).items():
        sec, _, name = dotted.partition(".")
        probe: dict[str, Any] = {sec: {name: value}} if name else {sec: value}
        try:
            config_cls.from_dict(probe)
        except error_cls as exc:
            field = str(getattr(exc, "field", dotted))
            message = str(exc).removeprefix(f"{field}: ")
            errors.append((field, message))
    return errors
