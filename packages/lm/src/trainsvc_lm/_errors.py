"""The errors of trainsvc-lm: each names the file, line or field that was wrong."""

from __future__ import annotations


class LMError(Exception):
    """Base class of every trainsvc-lm error."""


class ModelLoadError(LMError):
    """A model directory that cannot be loaded (missing file or shard, bad tensor).

    Attributes:
        path: the file or directory at fault.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class UnsupportedArchitectureError(ModelLoadError):
    """A ``config.json`` naming a model architecture this library does not implement."""


class ConfigError(LMError, ValueError):
    """An invalid configuration value (model, LoRA, training, sampling).

    Attributes:
        field: the dotted field name, e.g. ``lora.rank``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class DataError(LMError, ValueError):
    """Invalid training data, located by file and line (1-based) and field.

    Attributes:
        path: the data file.
        line: the 1-based line number, or None for the whole file.
        field: the JSON field at fault (``messages[2].role``), or None.
    """

    def __init__(self, path: str, line: int | None, message: str, field: str | None = None) -> None:
        where = path if line is None else f"{path}:{line}"
        if field:
            where += f": {field}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
        self.field = field


class TemplateError(LMError):
    """A chat template that failed to render (or called ``raise_exception``)."""
