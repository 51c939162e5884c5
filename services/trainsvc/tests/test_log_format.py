"""`trainsvc serve` logs human-readable lines on a terminal and JSON lines otherwise
or with --log-format json (`make run` shows the former)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "trainsvc"


def _first_log_line(tmp_path: Path, tty: bool, extra: tuple[str, ...] = ()) -> str:
    """The service's "listening" log line, read from a pty or a pipe."""
    args = [
        str(BIN),
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "",
        "--data-dir",
        str(tmp_path / "data"),
        *extra,
    ]
    if tty:
        main, sub = pty.openpty()
        proc = subprocess.Popen(args, stdin=sub, stdout=sub, stderr=sub, close_fds=True)
        os.close(sub)
        fd = main
    else:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
    text = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            lines = text.decode(errors="replace").splitlines(keepends=True)
            done = [ln for ln in lines if "listening" in ln and ln.endswith("\n")]
            if done:
                return done[0].strip()
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            text += chunk
    finally:
        proc.terminate()
        proc.wait(30)
        if tty:
            os.close(fd)
        elif proc.stdout is not None:
            proc.stdout.close()
    pytest.fail(f"no 'listening' line: {text!r}")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")
def test_terminal_gets_human_lines_and_json_on_request(tmp_path: Path) -> None:
    line = _first_log_line(tmp_path, tty=True)
    assert not line.startswith("{"), line
    assert "INFO" in line and "trainsvc listening" in line
    line = _first_log_line(tmp_path, tty=True, extra=("--log-format", "json"))
    assert json.loads(line)["message"] == "trainsvc listening"


def test_a_pipe_gets_json_lines(tmp_path: Path) -> None:
    line = _first_log_line(tmp_path, tty=False)
    assert json.loads(line)["level"] == "INFO"
