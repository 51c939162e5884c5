"""The run directory's rules: checkpoint file names and retention (format section 9).

This module is their one owner. Every other place that makes, parses or
prunes checkpoint file names calls these functions; the shared vectors
``tests/vectors/names.json`` and ``retention.json`` pin them for other
implementations (the Rust engine).
"""

from __future__ import annotations

import contextlib
import operator
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, SupportsIndex, TypeVar

from ._io import Compression, PathLike

MAX_STEP: Final = 2**63 - 1
"""The largest step a checkpoint name holds (a signed 64-bit int, as on the wire)."""

_PERIODIC: Final = "step_"
_EMERGENCY: Final = "emergency_step_"
_EXTENSIONS: Final[dict[Compression, str]] = {None: ".safetensors", "zstd": ".safetensors.zst"}
_NAME: Final = re.compile(r"(emergency_)?step_(0|[1-9][0-9]*)\.safetensors(\.zst)?")

_Name = TypeVar("_Name", bound="str | os.PathLike[str]")


def _check_step(step: object) -> int:
    # NumPy integers are accepted (a training loop often holds one); bools are not.
    value = None
    if not isinstance(step, bool) and hasattr(step, "__index__"):
        with contextlib.suppress(TypeError):
            value = operator.index(step)
    if value is None or not 0 <= value <= MAX_STEP:
        raise ValueError(f"step: expected an int in [0, {MAX_STEP}], found {step!r}")
    return value


@dataclass(frozen=True)
class CheckpointName:
    """What a checkpoint file name says: its step, whether it is an emergency one, its compression.

    Attributes:
        step: the training step, in ``[0, MAX_STEP]``.
        emergency: True for ``emergency_step_<N>`` (saved on a signal; retention never deletes it).
        compression: None for ``.safetensors``, ``"zstd"`` for ``.safetensors.zst``.
    """

    step: int
    emergency: bool = False
    compression: Compression = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "step", _check_step(self.step))
        if not isinstance(self.emergency, bool):
            raise ValueError(f"emergency: expected a bool, found {self.emergency!r}")
        if self.compression not in _EXTENSIONS:
            raise ValueError(f"compression: expected None or 'zstd', found {self.compression!r}")

    @property
    def file_name(self) -> str:
        """The file name: ``[emergency_]step_<N>.safetensors[.zst]``."""
        return self.checkpoint_id + _EXTENSIONS[self.compression]

    @property
    def checkpoint_id(self) -> str:
        """The name without its extensions: ``step_<N>`` or ``emergency_step_<N>``."""
        return f"{_EMERGENCY if self.emergency else _PERIODIC}{self.step}"

    def sort_key(self) -> tuple[int, bool, str]:
        """Oldest first; for one step, the periodic file before the emergency one (written later)."""
        return (self.step, self.emergency, self.file_name)

    def __str__(self) -> str:
        return self.file_name


def checkpoint_file_name(
    step: SupportsIndex, *, emergency: bool = False, compression: Compression = None
) -> str:
    """The file name of a checkpoint: ``step_12.safetensors``, ``emergency_step_12.safetensors.zst``.

    The step (an int, or a NumPy integer) is written in decimal without padding.

    Raises:
        ValueError: ``step`` is not an int in ``[0, MAX_STEP]`` or ``compression`` is not
            None or ``"zstd"`` (the message names the argument).
    """
    return CheckpointName(_check_step(step), emergency, compression).file_name


def parse_checkpoint_file_name(path: PathLike) -> CheckpointName | None:
    """What the last component of ``path`` says as a checkpoint name, or None when it is not one.

    The whole name must match: ``step_<N>.safetensors`` or ``.safetensors.zst``,
    optionally prefixed by ``emergency_``, with ``<N>`` decimal, no sign, no
    leading zero (``step_012`` is not a checkpoint) and at most ``MAX_STEP``.
    ``latest``, ``.tmp-`` files, ``step_1.safetensors.tmp`` and any other name
    give None. Nothing is read from disk.
    """
    m = _NAME.fullmatch(Path(path).name)
    if m is None:
        return None
    step = int(m.group(2))
    if step > MAX_STEP:
        return None
    return CheckpointName(step, m.group(1) is not None, "zstd" if m.group(3) else None)


def _check_count(field: str, value: object, *, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "None or an int >= 1" if optional else "an int >= 1"
        raise ValueError(f"{field}: expected {allowed}, found {value!r}")
    return value


@dataclass(frozen=True)
class RetentionPolicy:
    """Which checkpoints of a run directory to keep after a periodic save.

    Keeps the periodic checkpoints of the newest ``keep_last`` steps (a step
    saved both plain and compressed counts once), plus every periodic
    checkpoint whose step is a multiple of ``keep_every`` when it is set (step
    0 included). Emergency checkpoints and names that are not checkpoints are
    never deleted. If nothing that would remain is valid, the newest valid
    checkpoint among those selected is spared, so the only valid checkpoint
    is never deleted. Unreadable files count towards ``keep_last`` like any
    other: retention prunes, it does not repair.

    Attributes:
        keep_last: how many of the newest periodic steps to keep (>= 1).
        keep_every: None, or also keep every step that is a multiple of this (>= 1).

    Raises:
        ValueError: a field is out of range (the message names the field).
    """

    keep_last: int = 5
    keep_every: int | None = None

    def __post_init__(self) -> None:
        _check_count("keep_last", self.keep_last, optional=False)
        _check_count("keep_every", self.keep_every, optional=True)

    def select_for_deletion(
        self, names: Iterable[_Name], is_valid: Callable[[_Name], bool]
    ) -> list[_Name]:
        """The checkpoints this policy deletes from a directory holding ``names``.

        Args:
            names: the directory's entries: file names or paths (each is parsed with
                :func:`parse_checkpoint_file_name`; other names are ignored).
            is_valid: whether a checkpoint's file is readable and intact (it may read
                the whole file). Called only when the policy deletes something: on the
                checkpoints that stay, newest first, until one is valid; if none is, on
                the selected ones, newest first, until one is valid (that one is spared).

        Returns:
            The entries of ``names`` to delete, oldest first (the same objects).
        """
        parsed = [(p, n) for n in names if (p := parse_checkpoint_file_name(n)) is not None]
        parsed.sort(key=lambda pn: pn[0].sort_key())
        periodic_steps = sorted({p.step for p, _ in parsed if not p.emergency})
        keep = set(periodic_steps[-self.keep_last :])
        if self.keep_every is not None:
            keep.update(s for s in periodic_steps if s % self.keep_every == 0)
        doomed = [(p, n) for p, n in parsed if not p.emergency and p.step not in keep]
        if not doomed:
            return []
        kept = [n for p, n in reversed(parsed) if p.emergency or p.step in keep]
        if not any(is_valid(n) for n in kept):
            for i in range(len(doomed) - 1, -1, -1):
                if is_valid(doomed[i][1]):
                    del doomed[i]
                    break
        return [n for _, n in doomed]
