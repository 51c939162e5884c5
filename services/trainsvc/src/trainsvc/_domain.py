"""Domain model of the service: run specs and records, states, events, errors.

Nothing here knows about gRPC; `_convert` maps these to and from protobuf and
`_errors` maps the exceptions below to status codes.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

from trainsvc_checkpoint import parse_checkpoint_file_name

RUN_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


class State(enum.Enum):
    """A run's lifecycle state (same names as the wire enum)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    INTERRUPTED = "INTERRUPTED"

    @property
    def terminal(self) -> bool:
        """True for COMPLETED, STOPPED and FAILED: nothing happens to the run any more."""
        return self in (State.COMPLETED, State.STOPPED, State.FAILED)

    @property
    def active(self) -> bool:
        """True while a worker process belongs to the run."""
        return self in (State.PENDING, State.RUNNING, State.PAUSED)


class EventType(enum.Enum):
    """What an event records."""

    STATE_CHANGED = "STATE_CHANGED"
    LOG = "LOG"
    CHECKPOINT_SAVED = "CHECKPOINT_SAVED"
    WARNING = "WARNING"
    ERROR = "ERROR"


class ServiceError(Exception):
    """Base of the domain errors; `_errors.status_of` maps each to a status code."""


MAX_ECHO_CHARS = 100
"""Values a client sent are echoed in errors up to this many characters."""


def echo(value: object, limit: int = MAX_ECHO_CHARS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (and saying so).

    Echoing a client's value whole could make a reply larger than the client
    accepts (a 1 MB name in the status details exceeds gRPC's metadata limit).
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str | bytes) else len(text)
    return f"{text[:limit]}... ({size} characters)"


class InvalidArgumentError(ServiceError):
    """A request field is malformed.

    Attributes:
        field: the request field, e.g. ``run.step_budget``.
        description: what was wrong with it (the message without the field).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class NotFoundError(ServiceError):
    """An unknown run or checkpoint."""


class AlreadyExistsError(ServiceError):
    """A run id that is taken."""


class FailedPreconditionError(ServiceError):
    """The run's state forbids the transition."""


class ResourceExhaustedError(ServiceError):
    """A limit of the service was reached (say, too many concurrent streams).

    Attributes:
        subject: what is limited (``streams``), as the status's QuotaFailure names it.
    """

    def __init__(self, message: str, subject: str = "streams") -> None:
        super().__init__(message)
        self.subject = subject


class UnavailableError(ServiceError):
    """The service is shutting down, or a worker did not answer."""


class RegistryUnwritableError(UnavailableError):
    """The registry cannot write (the disk is full, or it failed); nothing was changed."""


class DeadlineExceededError(ServiceError):
    """The worker did not finish the request before the call's deadline."""


@dataclass(frozen=True)
class CheckpointPolicy:
    """When checkpoints are saved (0 = the kind's default interval) and how many are kept."""

    interval_steps: int = 0
    keep_last: int = 5
    keep_every: int = 0
    compress: bool = False


@dataclass(frozen=True)
class RunSpec:
    """What the user asked for; immutable after creation.

    Attributes:
        config: the kind's config as given: typed field names and dotted
            override keys mapped to values; the kind normalises it.
    """

    kind: str
    step_budget: int
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    policy: CheckpointPolicy = field(default_factory=CheckpointPolicy)
    max_restarts: int = 3
    display_name: str = ""
    resume_from: str = ""
    resources: dict[str, Any] = field(default_factory=dict)
    """What the worker needs of its machine (``run.resources``; see
    `trainsvc._backends.ResourceRequest`); empty: nothing requested."""


@dataclass
class RunRecord:
    """A run as the registry stores it."""

    id: str
    spec: RunSpec
    state: State
    step: int = 0
    steps_per_second: float = 0.0
    state_message: str = ""
    restarts: int = 0
    latest_checkpoint: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    create_time: float = 0.0
    start_time: float = 0.0
    update_time: float = 0.0
    end_time: float = 0.0
    resolved_config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The resource name, ``runs/{id}``."""
        return f"runs/{self.id}"


@dataclass(frozen=True)
class Event:
    """Something that happened to a run."""

    sequence: int
    run_id: str
    type: EventType
    time: float
    message: str = ""
    state: State | None = None
    previous_state: State | None = None
    checkpoint: str = ""
    step: int = 0


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint file the registry indexes."""

    run_id: str
    checkpoint_id: str
    step: int
    path: str
    size_bytes: int
    create_time: float
    emergency: bool = False

    @property
    def name(self) -> str:
        """The resource name, ``runs/{id}/checkpoints/{checkpoint_id}``."""
        return f"runs/{self.run_id}/checkpoints/{self.checkpoint_id}"


def parse_run_name(name: str, field: str = "name") -> str:
    """Return the run id of ``runs/{id}``.

    Raises:
        InvalidArgumentError: the name is malformed (names `field`).
    """
    prefix, _, run_id = name.partition("/")
    if prefix != "runs" or not RUN_ID_RE.fullmatch(run_id):
        raise InvalidArgumentError(
            field,
            f"must be 'runs/{{id}}' with id matching {RUN_ID_RE.pattern}, got {echo(name)}",
        )
    return run_id


def parse_checkpoint_id(checkpoint_id: str, field: str) -> str:
    """Validate a checkpoint id (a file stem like ``step_100``): no paths, no traversal.

    Raises:
        InvalidArgumentError: anything else, e.g. ``../x`` or ``/etc/passwd``.
    """
    parsed = parse_checkpoint_file_name(f"{checkpoint_id}.safetensors") if checkpoint_id else None
    if parsed is None or parsed.checkpoint_id != checkpoint_id:  # the last component only
        raise InvalidArgumentError(
            field,
            f"must be a checkpoint id like 'step_100' or 'emergency_step_7' "
            f"(no paths), got {echo(checkpoint_id)}",
        )
    return checkpoint_id


def parse_checkpoint_name(name: str, field: str) -> tuple[str, str]:
    """Split ``runs/{id}/checkpoints/{checkpoint_id}`` into (run id, checkpoint id).

    Raises:
        InvalidArgumentError: malformed, or a path that could escape the run directory.
    """
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "runs" or parts[2] != "checkpoints":
        raise InvalidArgumentError(
            field, f"must be 'runs/{{id}}/checkpoints/{{checkpoint_id}}', got {echo(name)}"
        )
    run_id = parse_run_name(f"runs/{parts[1]}", field)
    return run_id, parse_checkpoint_id(parts[3], field)
