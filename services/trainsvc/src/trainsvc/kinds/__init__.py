"""The trainer registry: each trainer kind is one small adapter module.

A kind module (``trainsvc.kinds.<name>``) defines ``KIND``, an object that
implements `TrainerKind`. Adding a kind is: write the module, add it to
`KIND_MODULES` with the libraries it needs and the service extra that installs
them (``trainsvc[<extra>]`` in services/trainsvc/pyproject.toml), add its config
message to the .proto. The service process only calls
`TrainerKind.resolve_config` (validation; input paths go through the
`InputRoots` it is given); the worker process calls `TrainerKind.create` and
drives the returned `TrainerAdapter`. A kind whose libraries are missing is
refused when a run of it is created; the service itself needs none of them.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from trainsvc._domain import InvalidArgumentError, RunSpec
from trainsvc._paths import InputRoots


@dataclass(frozen=True)
class KindModule:
    """Where a kind's adapter lives and what it needs installed."""

    module: str
    """The adapter module (``trainsvc.kinds.<name>``); imported on first use."""
    libraries: tuple[str, ...]
    """The trainer libraries it imports (top-level module names)."""
    extra: str
    """The service's extra that installs them: ``pip install 'trainsvc[<extra>]'``."""

    def missing(self) -> list[str]:
        """The libraries that are not installed."""
        return [lib for lib in self.libraries if importlib.util.find_spec(lib) is None]


KIND_MODULES: dict[str, KindModule] = {
    "emergence": KindModule("trainsvc.kinds.emergence", ("trainsvc_trainer",), "emergence"),
    "othello": KindModule("trainsvc.kinds.othello", ("trainsvc_engine",), "othello"),
    "lora": KindModule("trainsvc.kinds.lora", ("trainsvc_lm",), "lm"),
    "grpo": KindModule("trainsvc.kinds.grpo", ("trainsvc_lm", "trainsvc_trajectories"), "lm"),
}


@dataclass(frozen=True)
class EmergenceFrame:
    """Packed emergence payload (see the wire API's EmergencePayload)."""

    num_agents: int
    positions: bytes  # little-endian uint16 (row, col) pairs
    world_height: int
    world_width: int
    field: bytes
    field_shape: tuple[int, ...]
    field_encoding: str  # "uint8" or "float16"
    field_min: float
    field_max: float


@dataclass(frozen=True)
class OthelloFrame:
    """Packed othello payload: 64 squares, 0 empty / 1 black / 2 white."""

    board: bytes
    to_move: int
    games: int


@dataclass(frozen=True)
class LMFrame:
    """A language-model run's latest sample (see the wire API's LMPayload).

    Every frame repeats the newest sample until a newer one replaces it.
    """

    sample_prompt: str = ""
    sample_completion: str = ""
    sample_step: int = 0
    """The step the sample was generated at; 0 = no sample yet."""


@dataclass(frozen=True)
class FrameData:
    """A frame as a worker produces it (plain data, cheap to pickle)."""

    step: int
    time: float
    metrics: dict[str, float] = field(default_factory=dict)
    emergence: EmergenceFrame | None = None
    othello: OthelloFrame | None = None
    lm: LMFrame | None = None


FrameSink = Callable[[FrameData], None]


class RunInputError(Exception):
    """A run's inputs are invalid (found when its trainer is built): retrying cannot help.

    A kind's `create` (or its adapter's `restore`) raises it for bad input its
    `resolve_config` could not see (a corrupt weight file, a run that does not fit
    in memory, a checkpoint of another config); the run FAILS at once with this
    message instead of being restarted into a crash loop.
    """


class TrainerAdapter(Protocol):
    """One run's trainer inside its worker process."""

    @property
    def step(self) -> int:
        """Steps done so far."""

    @property
    def metrics(self) -> dict[str, float]:
        """The latest metrics."""

    def train(self, n: int, should_stop: Callable[[], bool]) -> int:
        """Run up to `n` steps, returning early (between steps) once `should_stop()`.

        Periodic checkpoints of the run's policy may be saved meanwhile.
        Returns the steps done.
        """

    def save_checkpoint(self, *, emergency: bool = False) -> Path:
        """Save the exact current state; return the file."""

    def restore(self, path: Path) -> int:
        """Restore the state saved in `path`; return its step."""

    def checkpoint_files(self) -> list[Path]:
        """The checkpoint files now in the run's checkpoint directory."""

    def close(self) -> None:
        """Release resources (wait for pending writes)."""


class TrainerKind(Protocol):
    """A trainer kind: validates configs (service side) and creates adapters (worker side)."""

    name: str
    default_checkpoint_interval: int
    resumes_newest_only: bool
    """True when the trainer can only continue from its newest checkpoint (not an older one)."""

    def resolve_config(self, spec: RunSpec, inputs: InputRoots) -> dict[str, Any]:
        """Return the full, validated trainer config for `spec` (JSON-safe).

        Paths the run reads are resolved with `inputs` (confined to the
        service's input directories) and stored absolute in the result.

        Raises:
            InvalidArgumentError: naming the request field (``run.emergence.num_agents``).
        """

    def create(
        self, config: dict[str, Any], checkpoint_dir: Path, on_frame: FrameSink
    ) -> TrainerAdapter:
        """Build the trainer from a resolved config (in the worker process)."""


_PATH_SUFFIXES = ("dir", "file", "path", "_dir", "_file", "_path", "_dirs", "_files", "_paths")


def is_path_key(dotted: str) -> bool:
    """Whether a dotted config key names a file or directory (``train.compile_cache_dir``).

    The service never takes such a value from a client's overrides: files a run
    writes go inside its own directory, and files it reads come through typed,
    confined fields.
    """
    return dotted.rsplit(".", 1)[-1].lower().endswith(_PATH_SUFFIXES)


def checkpoint_files_in(directory: Path) -> list[Path]:
    """The checkpoint files in a run's checkpoint directory (not temporaries), sorted by name."""
    if not directory.is_dir():
        return []
    return sorted(
        p
        for p in directory.iterdir()
        if p.name.endswith((".safetensors", ".safetensors.zst")) and not p.name.startswith(".")
    )


def trainer_field_error(
    exc: Exception, field_of: dict[str, str], fallback: Callable[[str], str]
) -> InvalidArgumentError:
    """The INVALID_ARGUMENT for a trainer library's ``ConfigError(field, message)``.

    Names the request field the trainer field came from (``field_of``, else
    ``fallback(trainer_field)``) and keeps the trainer's field in the message.
    """
    trainer_field = str(getattr(exc, "field", ""))
    request_field = field_of.get(trainer_field) or fallback(trainer_field)
    message = str(exc).split(": ", 1)[-1]
    return InvalidArgumentError(request_field, f"{message} (trainer field {trainer_field})")


def available_kinds() -> list[str]:
    """Kinds whose trainer libraries are installed."""
    return [k for k, m in KIND_MODULES.items() if not m.missing()]


def get_kind(name: str, field: str = "run.kind") -> TrainerKind:
    """Return the kind named `name`.

    Raises:
        InvalidArgumentError: unknown kind, or its trainer libraries are not installed
            (the message names the extra that installs them).
    """
    if name not in KIND_MODULES:
        raise InvalidArgumentError(
            field, f"unknown kind {name!r}; allowed: {', '.join(KIND_MODULES)}"
        )
    entry = KIND_MODULES[name]
    missing = entry.missing()
    if missing:
        raise InvalidArgumentError(
            field,
            f"kind {name!r} is not installed on the service (missing {', '.join(missing)}): "
            f"install it with pip install 'trainsvc[{entry.extra}]'; "
            f"installed kinds: {', '.join(available_kinds()) or 'none'}",
        )
    kind: TrainerKind = importlib.import_module(entry.module).KIND
    return kind


__all__ = [
    "KIND_MODULES",
    "EmergenceFrame",
    "FrameData",
    "FrameSink",
    "InputRoots",
    "KindModule",
    "LMFrame",
    "OthelloFrame",
    "RunInputError",
    "TrainerAdapter",
    "TrainerKind",
    "available_kinds",
    "checkpoint_files_in",
    "get_kind",
    "trainer_field_error",
]
