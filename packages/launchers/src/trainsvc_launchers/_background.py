"""Run a command detached from the terminal (a new session), on Linux and macOS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["spawn_detached"]


def spawn_detached(argv: list[str], log_path: Path, module: str = "trainsvc_launchers") -> int:
    """Start ``python -m module argv`` in a new session with output appended to ``log_path``; return its pid.

    The child survives the terminal closing (no controlling terminal, its own
    process group, standard input from ``/dev/null``).

    Raises:
        OSError: on Windows, which has no ``setsid``.
    """
    if os.name != "posix":
        raise OSError("--background needs Linux or macOS (a POSIX new session)")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUTF8": "1"}
    with log_path.open("a", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    return proc.pid
