"""The launchers' one contact point with the trainer package (optional at run time).

The trainer (``trainsvc_trainer``, JAX) is heavy and may be absent on the
machine that only submits Kaggle kernels, so it is imported lazily here.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["flatten", "trainer_available", "validate_emergence", "validate_othello"]


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


# The wire API's typed OthelloConfig fields -> the engine's config keys (as the service maps them).
_OTHELLO_TYPED = {
    "search_depth": "search_depth",
    "epsilon": "epsilon_start",
    "epsilon_final": "epsilon_end",
    "td_lambda": "lambda",
    "learning_rate": "learning_rate",
    "threads": "threads",
}


def validate_othello(section: dict[str, Any]) -> list[tuple[str, str]]:
    """Validate an othello config section with the engine's own checks, field by field.

    Keys are the service's typed fields (``search_depth``, ``epsilon``, ...),
    ``frame_interval``, or engine fields. Returns ``(field, message)`` pairs; empty
    when valid or when the engine is not installed here (the service checks again).
    """
    try:
        engine = importlib.import_module("trainsvc_engine")
    except ImportError:
        return []
    import tempfile

    errors: list[tuple[str, str]] = []
    for key, value in section.items():
        if key == "frame_interval":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                errors.append((key, f"must be an integer >= 1, got {value!r}"))
            continue
        if key == "seed":
            errors.append((key, "is set from the top-level seed"))
            continue
        name = _OTHELLO_TYPED.get(key, key)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                engine.TrainingManager(tmp, **{name: value})
            except (TypeError, ValueError, getattr(engine, "ConfigError", ValueError)) as exc:
                message = str(exc)
                message = message.split(": ", 1)[1] if message.startswith(f"{name}: ") else message
                errors.append((key, message))
    return errors
