"""Input paths from requests: resolved, checked to exist, and confined to the input directories.

A run may name files it reads (a language model's directory, its training
data). The service only opens them inside the directories it was told to read
from (``trainsvc serve --input-dir``, default: its working directory): every
path is made absolute, symlinks are followed, and the real path must lie
inside one of those directories. Anything else is INVALID_ARGUMENT naming the
request field, so a client cannot make the service read (and echo parts of)
arbitrary files.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trainsvc._domain import InvalidArgumentError

MAX_PATH_CHARS = 4096
_ECHO_CHARS = 200


def _echo(text: str) -> str:
    """`text` as an error message quotes it: repr, cut to a readable length."""
    shown = repr(text)
    return shown if len(shown) <= _ECHO_CHARS else shown[: _ECHO_CHARS - 3] + "..."


@dataclass(frozen=True)
class InputRoots:
    """The directories runs may read their inputs from (absolute, symlinks resolved)."""

    roots: tuple[Path, ...]

    @classmethod
    def of(cls, dirs: Iterable[Path]) -> InputRoots:
        """Resolve `dirs` (relative ones against the working directory)."""
        return cls(tuple(Path(d).expanduser().resolve() for d in dirs))

    def describe(self) -> str:
        """The directories, for messages."""
        return ", ".join(str(r) for r in self.roots) or "(none)"

    def resolve(self, value: object, field: str, *, expect: Literal["file", "dir"]) -> Path:
        """Return the real path of `value` once it is known to be an allowed, existing `expect`.

        Args:
            value: the path as the request gave it (relative paths are relative
                to the service's working directory).
            field: the request field, for the error (``run.lora.model``).
            expect: a regular file or a directory.

        Raises:
            InvalidArgumentError: not a string, empty, outside every input
                directory, missing, or not a file/directory.
        """
        if not isinstance(value, str) or not value:
            raise InvalidArgumentError(field, f"must be a non-empty path, got {_echo(str(value))}")
        if len(value) > MAX_PATH_CHARS or "\0" in value:
            raise InvalidArgumentError(
                field, f"is not a usable path (at most {MAX_PATH_CHARS} characters, no NUL)"
            )
        try:
            path = Path(value).expanduser().resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise InvalidArgumentError(field, f"cannot resolve {_echo(value)}: {exc}") from None
        if not any(path == root or root in path.parents for root in self.roots):
            raise InvalidArgumentError(
                field,
                f"{_echo(value)} lies outside the directories this service reads inputs from "
                f"({self.describe()}; `trainsvc serve --input-dir DIR` adds one)",
            )
        if not path.exists():
            raise InvalidArgumentError(field, f"{_echo(value)} does not exist")
        if expect == "dir" and not path.is_dir():
            raise InvalidArgumentError(field, f"{_echo(value)} is not a directory")
        if expect == "file" and not path.is_file():
            raise InvalidArgumentError(field, f"{_echo(value)} is not a regular file")
        return path
