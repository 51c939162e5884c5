"""Agent-readable output: one line per event, human or JSON, and the exit codes.

Every human line reads ``[SECTION] ✅ SUCCESS: message`` (or ``❌ ERROR``,
``⚠️ WARNING``, ``ℹ️ INFO``) so that both people and automation agents can
scan it; colour is added only when the stream is a terminal. With ``--json``
each event is one JSON object per line instead.
"""

from __future__ import annotations

import enum
import json
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["ExitCode", "Level", "Reporter"]


class ExitCode(enum.IntEnum):
    """Process exit codes shared by every trainsvc command."""

    OK = 0
    ERROR = 1
    CRASH_LOOP = 2


class Level(enum.Enum):
    """Severity of one reported line."""

    SUCCESS = "success"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


_ICON = {
    Level.SUCCESS: "✅ SUCCESS",
    Level.ERROR: "❌ ERROR",
    Level.WARNING: "⚠️ WARNING",
    Level.INFO: "ℹ️ INFO",
}
_COLOUR = {Level.SUCCESS: "32", Level.ERROR: "31", Level.WARNING: "33", Level.INFO: "36"}


@dataclass
class Reporter:
    """Writes reported events to a stream, as text lines or JSON objects.

    Args:
        json_mode: write one JSON object per line instead of text.
        stream: where to write; standard output by default.
        colour: ``None`` means colour only when ``stream`` is a terminal.
    """

    json_mode: bool = False
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    colour: bool | None = None
    errors: int = 0
    warnings: int = 0

    def _use_colour(self) -> bool:
        if self.colour is not None:
            return self.colour
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def emit(self, level: Level, section: str, message: str, **data: Any) -> None:
        """Report one event.

        Args:
            level: its severity.
            section: the section tag, e.g. ``SETUP-H100`` (brackets are added).
            message: one line for people.
            **data: extra fields, included in JSON mode.
        """
        if level is Level.ERROR:
            self.errors += 1
        elif level is Level.WARNING:
            self.warnings += 1
        if self.json_mode:
            record = {"section": section, "level": level.value, "message": message, **data}
            line = json.dumps(record, ensure_ascii=False, default=str)
        else:
            tag = _ICON[level]
            if self._use_colour():
                tag = f"\033[{_COLOUR[level]}m{tag}\033[0m"
            line = f"[{section}] {tag}: {message}"
        self.stream.write(line + "\n")
        self.stream.flush()

    def success(self, section: str, message: str, **data: Any) -> None:
        """Report a check or step that passed."""
        self.emit(Level.SUCCESS, section, message, **data)

    def error(self, section: str, message: str, **data: Any) -> None:
        """Report a failure."""
        self.emit(Level.ERROR, section, message, **data)

    def warning(self, section: str, message: str, **data: Any) -> None:
        """Report something that works but deserves attention."""
        self.emit(Level.WARNING, section, message, **data)

    def info(self, section: str, message: str, **data: Any) -> None:
        """Report neutral progress or a hint (how to reconnect, what to do next)."""
        self.emit(Level.INFO, section, message, **data)
