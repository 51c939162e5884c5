"""The conversation between the service and a run's worker process, as typed messages.

Both sides send these frozen dataclasses over a multiprocessing pipe (pickled):
the service sends `Command`; the worker sends the others (`WorkerMessage`). The
service dispatches on them with ``match``, so a new message is one class here
and one ``case`` there, and a misspelt field is a type error, not a silent
``msg[2]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trainsvc.kinds import FrameData

CommandName = Literal["pause", "resume", "stop", "checkpoint", "shutdown"]
"""What the service can ask a worker: ``stop`` ends the run, ``shutdown`` the service."""
COMMANDS: tuple[CommandName, ...] = ("pause", "resume", "stop", "checkpoint", "shutdown")
SIGNAL_REQUEST = "signal"
"""The request id of the `Reply` a worker sends after saving on SIGTERM (no command asked)."""


@dataclass(frozen=True)
class Command:
    """Service -> worker: do ``name``, then answer with a `Reply` carrying ``request_id``."""

    name: CommandName
    request_id: str


@dataclass(frozen=True)
class Ready:
    """The trainer is built (and restored): the run trains from ``step``."""

    step: int


@dataclass(frozen=True)
class Progress:
    """A chunk of steps is done."""

    step: int
    steps_per_second: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class FrameReady:
    """A frame for the run's subscribers."""

    frame: FrameData


@dataclass(frozen=True)
class CheckpointSaved:
    """A checkpoint file appeared in the run's directory."""

    path: str
    step: int
    emergency: bool
    size_bytes: int = 0
    """The file's size; 0: the service takes it from ``path`` (a local file)."""


@dataclass(frozen=True)
class CheckpointsDeleted:
    """Checkpoint files left the run's directory (retention)."""

    paths: tuple[str, ...]


@dataclass(frozen=True)
class CheckpointSkipped:
    """An unusable checkpoint the worker fell back over when restoring (not a crash)."""

    path: str
    reason: str


@dataclass(frozen=True)
class Reply:
    """The answer to a `Command`: ``detail`` is the checkpoint path for saving commands,
    or why it failed when not ``ok``."""

    request_id: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Completed:
    """The step budget is done (and saved); the worker exits."""

    step: int


@dataclass(frozen=True)
class Log:
    """A line for the run's events: ``level`` ``INFO``, ``WARNING`` or ``ERROR``."""

    level: str
    text: str


@dataclass(frozen=True)
class Fatal:
    """Why the worker is about to die; ``permanent``: the run's inputs are invalid, so a
    restart could only fail the same way."""

    message: str
    permanent: bool = False


WorkerMessage = (
    Ready
    | Progress
    | FrameReady
    | CheckpointSaved
    | CheckpointsDeleted
    | CheckpointSkipped
    | Reply
    | Completed
    | Log
    | Fatal
)
"""Everything a worker sends to the service."""
