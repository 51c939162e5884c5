"""A launch's lifecycle after ``trainsvc-launch local|h100|m4``: ``status``, ``logs``,
``stop`` (like SkyPilot's ``sky status``, ``sky logs``, ``sky cancel``) and
``autostart`` after a reboot (a systemd user unit, or a cron ``@reboot`` line).

Each launch records where it runs in ``<data-dir>/launch/<run_id>.launch-state.json``:
the target, the tmux session (and socket) or the detached pid, the port and the log.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from trainsvc_launchers._config import ConfigError, load_launch_config
from trainsvc_launchers._files import read_json, write_json_atomic, write_text_atomic
from trainsvc_launchers._output import ExitCode, Reporter
from trainsvc_launchers._service import cli
from trainsvc_launchers._supervisor import run_state

__all__ = ["add_parsers", "lifecycle", "record_launch", "state_path"]

SECTION = "LAUNCH"
STOP_WAIT_S = 300.0


def state_path(data_dir: Path, run_id: str) -> Path:
    """Where a launch of ``run_id`` is recorded."""
    return data_dir / "launch" / f"{run_id}.launch-state.json"


def record_launch(data_dir: Path, run_id: str, **fields: Any) -> None:
    """Record a launch (target, session, socket, pid, port, log, argv)."""
    write_json_atomic(state_path(data_dir, run_id), {"run_id": run_id, **fields})


def add_parsers(sub: Any, common: Any) -> None:
    """The ``status``, ``logs``, ``stop`` and ``autostart`` subcommands."""
    for name, help_text in (
        ("status", "is a launch running: its session or process, the run's state and step"),
        ("logs", "print (or --follow) the launch's newest training log"),
        ("stop", "stop a launch: the service checkpoints the run (resumable by launching again)"),
        ("autostart", "start the launch again after a reboot (systemd user unit or cron line)"),
    ):
        p = sub.add_parser(name, help=help_text)
        common(p)
        p.add_argument("--config", type=Path, required=True, help="the launch config")
        p.add_argument("--data-dir", type=Path, default=Path(".trainsvc"), help="service data dir")
        if name == "logs":
            p.add_argument("--lines", type=int, default=50, help="lines from the end")
            p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
        if name == "autostart":
            p.add_argument("--target", choices=("local", "h100", "m4"), default="h100")
            p.add_argument(
                "--cron", action="store_true", help="print a crontab @reboot line instead"
            )
            p.add_argument("--disable", action="store_true", help="remove the systemd user unit")


def _load(args: argparse.Namespace, out: Reporter) -> tuple[str, dict[str, Any]] | None:
    try:
        run_id = load_launch_config(args.config).run_id
    except ConfigError as exc:
        for err in exc.errors:
            out.error(SECTION, f"config: {err}")
        return None
    path = state_path(args.data_dir.resolve(), run_id)
    try:
        state = read_json(path)
    except (OSError, ValueError):
        state = {}
    return run_id, state if isinstance(state, dict) else {}


def _tmux(state: dict[str, Any]) -> list[str] | None:
    exe = shutil.which("tmux")
    if exe is None or not state.get("session"):
        return None
    socket = state.get("tmux_socket")
    return [exe, *(["-L", str(socket)] if socket else [])]


def _alive(state: dict[str, Any]) -> bool:
    tmux = _tmux(state)
    if tmux is not None:
        has = [*tmux, "has-session", "-t", f"={state['session']}"]
        return subprocess.run(has, capture_output=True, check=False).returncode == 0
    pid = state.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lifecycle(args: argparse.Namespace, out: Reporter) -> ExitCode:
    """Run ``status``, ``logs``, ``stop`` or ``autostart``."""
    if args.command == "autostart":
        return _autostart(args, out)
    loaded = _load(args, out)
    if loaded is None:
        return ExitCode.ERROR
    run_id, state = loaded
    if not state:
        out.error(SECTION, f"no launch of {run_id} recorded under {args.data_dir}")
        return ExitCode.ERROR
    log = Path(str(state.get("log", "")))
    if args.command == "logs":
        return _logs(log, args.lines, args.follow, out)
    alive = _alive(state)
    if args.command == "stop":
        return _stop(state, log, alive, out)
    where = (
        f"tmux session {state['session']}" if state.get("session") else f"pid {state.get('pid')}"
    )
    got = (
        cli(f"127.0.0.1:{state.get('port', 50051)}", "runs", "get", run_id, timeout=30)
        if alive
        else None
    )
    run, step = run_state(got.data) if got is not None and got.ok else ("UNKNOWN", 0)
    status = "running" if alive else "stopped"
    out.info(
        SECTION,
        f"{run_id}: launch {status} ({state.get('target')}, {where}); run {run} at step {step}; log: {log}",
        run_id=run_id,
        launch=status,
        target=state.get("target"),
        run_state=run,
        step=step,
        log=str(log),
    )
    return ExitCode.OK


def _logs(log: Path, lines: int, follow: bool, out: Reporter) -> ExitCode:
    try:
        handle = log.open(encoding="utf-8", errors="replace")
    except OSError as exc:
        out.error(SECTION, f"cannot read the log {log}: {exc.strerror}")
        return ExitCode.ERROR
    with handle:
        for line in handle.read().splitlines()[-lines:] if lines > 0 else []:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            while follow:
                line = handle.readline()
                if line:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                else:
                    time.sleep(0.5)
    return ExitCode.OK


def _stop(state: dict[str, Any], log: Path, alive: bool, out: Reporter) -> ExitCode:
    if not alive:
        out.info(SECTION, "the launch is not running")
        return ExitCode.OK
    tmux = _tmux(state)
    if tmux is not None:  # SIGHUP to the supervisor: the service checkpoints, then exits
        subprocess.run([*tmux, "kill-session", "-t", f"={state['session']}"], check=False)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(state["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        if "trainsvc exited with code" in text or "trainsvc stopped" in text:
            break
        if tmux is None and not _alive(state):
            break
        time.sleep(0.5)
    else:
        out.warning(
            SECTION, f"the service did not confirm its exit within {STOP_WAIT_S:.0f} s; see {log}"
        )
        return ExitCode.ERROR
    out.success(SECTION, "stopped; the run is checkpointed: launching again resumes it")
    return ExitCode.OK


def _autostart(args: argparse.Namespace, out: Reporter) -> ExitCode:
    try:
        run_id = load_launch_config(args.config).run_id
    except ConfigError as exc:
        for err in exc.errors:
            out.error(SECTION, f"config: {err}")
        return ExitCode.ERROR
    cwd = Path.cwd()
    argv = [
        sys.executable, "-m", "trainsvc_launchers", args.target,
        "--config", str(args.config.resolve()), "--data-dir", str(args.data_dir.resolve()),
        "--logs-dir", str((cwd / "logs").resolve()),
    ]  # fmt: skip
    command = shlex.join(argv)
    if args.cron:
        line = f"@reboot cd {shlex.quote(str(cwd))} && {command} >> {shlex.quote(str(cwd / 'logs' / 'autostart.log'))} 2>&1"
        out.info(SECTION, "add this line with `crontab -e`:", cron=line)
        if not out.json_mode:
            print(line)
        return ExitCode.OK
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    unit_name = f"trainsvc-{run_id}.service"
    unit = config_home / "systemd" / "user" / unit_name
    systemctl = shutil.which("systemctl")
    if args.disable:
        if systemctl:
            subprocess.run(
                [systemctl, "--user", "disable", unit_name], capture_output=True, check=False
            )
        with contextlib.suppress(FileNotFoundError):
            unit.unlink()
        out.success(SECTION, f"autostart of {run_id} removed ({unit})")
        return ExitCode.OK
    write_text_atomic(
        unit,
        "[Unit]\n"
        f"Description=trainsvc launch of run {run_id} (resumes from its newest checkpoint)\n"
        "After=network-online.target\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"WorkingDirectory={cwd}\n"
        f"ExecStart={command}\n\n"
        "[Install]\n"
        "WantedBy=default.target\n",
    )
    enabled = False
    if systemctl:
        done = subprocess.run(
            [systemctl, "--user", "enable", unit_name], capture_output=True, text=True, check=False
        )
        enabled = done.returncode == 0
    if enabled:
        out.success(SECTION, f"autostart enabled: {unit}", unit=str(unit))
        out.info(
            SECTION,
            f"to start it at boot before you log in: sudo loginctl enable-linger {os.environ.get('USER', '$USER')}",
        )
    else:
        out.warning(
            SECTION,
            f"wrote {unit}, but systemd (user) is not available here to enable it; "
            "use `trainsvc-launch autostart --cron ...` for a crontab @reboot line",
            unit=str(unit),
        )
    return ExitCode.OK
