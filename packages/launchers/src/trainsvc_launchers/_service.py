"""Drive the trainsvc service through its commands: ``trainsvc serve`` and ``trainsvc-cli``.

The launchers never import grpc: they start the service and talk to it with
``trainsvc-cli ... --json`` subprocesses, exactly as a person would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CliResult", "cli", "command", "serve_command"]


def command(name: str) -> list[str]:
    """The argv prefix that runs the console script ``name`` (beside this Python first)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return [str(beside)]
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found: install trainsvc and trainsvc-client (pip install trainsvc trainsvc-client)"
        )
    return [found]


def serve_command(port: int, data_dir: Path, input_dirs: Sequence[Path] = ()) -> list[str]:
    """``trainsvc serve`` on 127.0.0.1:``port`` with its data in ``data_dir`` (no metrics port).

    ``input_dirs``: the directories a run may read (a lora run's model and data).
    """
    listen = f"127.0.0.1:{port}"
    inputs = [arg for d in input_dirs for arg in ("--input-dir", str(d))]
    return [
        *command("trainsvc"),
        "serve",
        "--listen",
        listen,
        "--data-dir",
        str(data_dir),
        "--metrics-listen",
        "",
        *inputs,
    ]


@dataclass(frozen=True)
class CliResult:
    """One ``trainsvc-cli`` call: exit code, parsed JSON (when any) and error text."""

    returncode: int
    data: Any
    stderr: str

    @property
    def ok(self) -> bool:
        """Whether the command succeeded."""
        return self.returncode == 0


def cli_argv(server: str, *args: str) -> list[str]:
    """The argv of ``trainsvc-cli <args> --server SERVER --json``."""
    return [*command("trainsvc-cli"), *args, "--server", server, "--json"]


def cli(server: str, *args: str, timeout: float = 120) -> CliResult:
    """Run ``trainsvc-cli --server SERVER <args> --json`` and parse its JSON output."""
    argv = cli_argv(server, *args)
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return CliResult(
            124, None, f"trainsvc-cli {' '.join(args)} timed out after {timeout:.0f} s"
        )
    data: Any = None
    text = proc.stdout.strip()
    if text:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
    return CliResult(proc.returncode, data, proc.stderr.strip())
