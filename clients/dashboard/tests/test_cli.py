"""The `trainsvc-dashboard` command's argument checks (real subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys

CMD = [sys.executable, "-m", "trainsvc_dashboard._cli"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSVC_")}
    return subprocess.run([*CMD, *args], capture_output=True, text=True, timeout=60, env=env)


def test_help_exits_zero() -> None:
    out = _run("--help")
    assert out.returncode == 0
    assert "--login-token" in out.stdout


def test_beyond_loopback_without_login_token_is_refused() -> None:
    out = _run("--listen", "0.0.0.0:0", "--server", "127.0.0.1:1")
    assert out.returncode == 1
    assert "--login-token" in out.stderr
    assert "loopback" in out.stderr


def test_bad_listen_address_names_the_option() -> None:
    out = _run("--listen", "nope")
    assert out.returncode == 2
    assert "--listen" in out.stderr
