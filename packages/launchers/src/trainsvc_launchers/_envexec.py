"""``python -m trainsvc_launchers._envexec ENV_FILE -- COMMAND...``: run COMMAND with exactly
the environment saved in ENV_FILE (a JSON object), deleting the file first.

A tmux session gets the environment of the tmux *server*, not of the command that
asked for it: when a server is already running (another session), variables set
for ``trainsvc-launch`` would never reach training. The launcher saves its
environment in a private file (mode 0600; it may hold keys) and starts the
session through this module, so the session runs with the launcher's environment
whatever the server's is.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from trainsvc_launchers._files import write_text_atomic

__all__ = ["main", "wrap"]


def wrap(argv: list[str], env: Mapping[str, str], env_file: Path) -> list[str]:
    """Save ``env`` to ``env_file`` (mode 0600) and return the command that runs ``argv`` with it."""
    write_text_atomic(env_file, json.dumps(dict(env)))  # a mkstemp file: owner-only
    env_file.chmod(0o600)
    return [sys.executable, "-m", "trainsvc_launchers._envexec", str(env_file), "--", *argv]


def main(argv: list[str] | None = None) -> int:
    """Entry point; replaces this process with the command (returns only on a usage error)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[1] != "--":
        print(
            "usage: python -m trainsvc_launchers._envexec ENV_FILE -- COMMAND...", file=sys.stderr
        )
        return 1
    path = Path(args[0])
    env = json.loads(path.read_text(encoding="utf-8"))
    with contextlib.suppress(OSError):
        path.unlink()
    os.execvpe(args[2], args[2:], {str(k): str(v) for k, v in env.items()})


if __name__ == "__main__":
    sys.exit(main())
