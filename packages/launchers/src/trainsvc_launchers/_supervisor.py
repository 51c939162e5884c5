"""The process that runs inside the tmux session (or detached on a Mac): service + run.

It starts ``trainsvc serve``, creates the run or resumes it (re-running a
launch resumes from the latest checkpoint instead of starting over), then
follows the run's events until it ends; everything it and the service print
goes to the session's log. SIGTERM/SIGHUP are passed on to the service, which
saves an emergency checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO

from trainsvc_launchers._config import LaunchConfig, load_launch_config
from trainsvc_launchers._files import write_text_atomic
from trainsvc_launchers._lm import input_dirs
from trainsvc_launchers._output import ExitCode, Reporter
from trainsvc_launchers._service import cli, cli_argv, command, serve_command

__all__ = ["main", "run_state", "to_toml"]

READY_TIMEOUT_S = 180.0
PROBE_TIMEOUT_S = 60.0
"""How long one readiness probe (``trainsvc-cli runs list``) may take before another."""
_RESUMABLE = {"PAUSED", "INTERRUPTED"}
_TERMINAL = {"COMPLETED", "STOPPED", "FAILED"}


class Tee:
    """A text stream that writes to the log file and, while it lasts, to the terminal (tmux pane).

    The supervisor owns the log, so closing the tmux session (SIGHUP to the
    pane) cannot cut the log short: writes to a vanished terminal are dropped.
    """

    def __init__(self, log: Path) -> None:
        self._log = log.open("a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()
        self._terminal = True

    def write(self, text: str) -> int:
        with self._lock:
            self._log.write(text)
            self._log.flush()
            if self._terminal:
                try:
                    sys.stdout.write(text)
                    sys.stdout.flush()
                except (OSError, ValueError):
                    self._terminal = False
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._log.flush()

    def isatty(self) -> bool:
        return False

    def pump(self, stream: IO[bytes]) -> threading.Thread:
        """Copy a child's output into this stream on a thread."""

        def run() -> None:
            for raw in iter(stream.readline, b""):
                self.write(raw.decode("utf-8", errors="replace"))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


def _popen(argv: list[str], tee: Tee) -> subprocess.Popen[bytes]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}  # one event per log line
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
    )
    assert proc.stdout is not None
    tee.pump(proc.stdout)
    return proc


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise ValueError(f"cannot write {value!r} as a TOML value")


def to_toml(section: dict[str, object]) -> str:
    """A trainer config (scalars and one level of tables) as TOML, for ``runs create --config``."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in section.items() if not isinstance(v, dict)]
    for key, table in section.items():
        if isinstance(table, dict):
            lines.append(f"\n[{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def run_state(data: object) -> tuple[str, int]:
    """``(state, step)`` from ``trainsvc-cli runs get --json`` output."""
    if not isinstance(data, dict):
        return "UNKNOWN", 0
    return str(data.get("state", "UNKNOWN")), int(data.get("step", 0) or 0)


def _create_args(cfg: LaunchConfig, data_dir: Path) -> list[str]:
    args = [
        "runs", "create", "--kind", cfg.kind, "--steps", str(cfg.step_budget), "--seed", str(cfg.seed),
        "--checkpoint-interval", str(cfg.interval_steps), "--keep-last", str(cfg.keep_last), "--id", cfg.run_id,
    ]  # fmt: skip
    if cfg.trainer:
        path = data_dir / "launch" / f"{cfg.run_id}.trainer.toml"
        write_text_atomic(path, to_toml(cfg.trainer))
        args += ["--config", str(path)]
    return args


def supervise(
    cfg: LaunchConfig, data_dir: Path, port: int, section: str, out: Reporter, tee: Tee
) -> ExitCode:
    """Start the service, create or resume the run, follow it; returns the exit code."""
    server = f"127.0.0.1:{port}"
    out.info(section, f"starting trainsvc on {server} (data in {data_dir})")
    inputs = input_dirs(cfg.trainer) if cfg.kind == "lora" else []
    service = _popen(serve_command(port, data_dir, inputs), tee)

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            service.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, forward)
    try:
        return _drive(cfg, data_dir, server, service, section, out, tee)
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=300)
            except subprocess.TimeoutExpired:
                service.kill()
        out.info(section, f"trainsvc exited with code {service.wait()}")


def _wait_ready(server: str, service: subprocess.Popen[bytes], section: str, out: Reporter) -> bool:
    """Probe the service with ``trainsvc-cli runs list`` until it answers; give up at once
    when it exits (a probe can hang on a port another process holds), or after
    `READY_TIMEOUT_S`."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    probe: subprocess.Popen[bytes] | None = None
    probe_end = 0.0
    try:
        while True:
            time.sleep(0.5)
            if service.poll() is not None:
                out.error(
                    section, f"trainsvc exited with code {service.returncode} before it was ready"
                )
                return False
            if probe is not None and probe.poll() == 0:
                out.success(section, f"trainsvc is up on {server}")
                return True
            now = time.monotonic()
            if now > deadline:
                out.error(
                    section, f"trainsvc did not answer on {server} within {READY_TIMEOUT_S:.0f} s"
                )
                return False
            if probe is None or probe.poll() is not None or now > probe_end:
                _end(probe)  # refused (not listening yet), or hung: probe again
                probe = subprocess.Popen(
                    cli_argv(server, "runs", "list"),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                probe_end = now + PROBE_TIMEOUT_S
    finally:
        _end(probe)


def _end(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def _start_run(
    cfg: LaunchConfig, data_dir: Path, server: str, section: str, out: Reporter
) -> ExitCode | None:
    """Create the run, or resume it; ``None`` when it is now running, else the exit code."""
    got = cli(server, "runs", "get", cfg.run_id)
    if not got.ok:
        created = cli(server, *_create_args(cfg, data_dir))
        if not created.ok:
            out.error(section, f"creating run {cfg.run_id} failed: {created.stderr}")
            return ExitCode.ERROR
        out.success(section, f"created run {cfg.run_id} ({cfg.kind}, {cfg.step_budget} steps)")
        return None
    state, step = run_state(got.data)
    if state in _RESUMABLE:
        resumed = cli(server, "runs", "resume", cfg.run_id)
        if not resumed.ok:
            out.error(section, f"resume of {cfg.run_id} failed: {resumed.stderr}")
            return ExitCode.ERROR
        out.success(section, f"resumed run {cfg.run_id} from step {step}")
        return None
    if state in _TERMINAL:
        message = str(got.data.get("state_message", "")) if isinstance(got.data, dict) else ""
        if state != "FAILED":
            out.info(section, f"run {cfg.run_id} is already {state} at step {step}")
            return ExitCode.OK
        out.error(section, f"run {cfg.run_id} is FAILED at step {step}: {message}")
        out.info(
            section,
            f"retry it from its newest checkpoint: trainsvc-cli --server {server} runs retry {cfg.run_id}",
        )
        return ExitCode.CRASH_LOOP if "crash loop" in message else ExitCode.ERROR
    out.info(section, f"run {cfg.run_id} is {state} at step {step}")
    return None


def _drive(
    cfg: LaunchConfig,
    data_dir: Path,
    server: str,
    service: subprocess.Popen[bytes],
    section: str,
    out: Reporter,
    tee: Tee,
) -> ExitCode:
    if not _wait_ready(server, service, section, out):
        return ExitCode.ERROR
    started = _start_run(cfg, data_dir, server, section, out)
    if started is not None:
        return started
    follow_cmd = [
        *command("trainsvc-cli"),
        "runs",
        "events",
        cfg.run_id,
        "--follow",
        "--server",
        server,
    ]
    follow = _popen(follow_cmd, tee)
    while follow.poll() is None and service.poll() is None:
        time.sleep(1.0)
    if follow.poll() is None:
        follow.terminate()
    final = cli(server, "runs", "get", cfg.run_id)
    state, step = run_state(final.data) if final.ok else ("UNKNOWN", 0)
    if service.poll() is not None and state not in _TERMINAL:
        out.info(
            section,
            f"trainsvc stopped while run {cfg.run_id} was {state}; re-run the launch to resume",
        )
        return ExitCode.OK if service.returncode == 0 else ExitCode.ERROR
    if state == "FAILED":
        message = final.data.get("state_message", "") if isinstance(final.data, dict) else ""
        out.error(section, f"run {cfg.run_id} FAILED at step {step}: {message}")
        out.info(
            section,
            f"retry it from its newest checkpoint: trainsvc-cli --server {server} runs retry {cfg.run_id}",
        )
        return ExitCode.CRASH_LOOP if "crash loop" in str(message) else ExitCode.ERROR
    out.success(section, f"run {cfg.run_id} is {state} at step {step}")
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    """``python -m trainsvc_launchers._supervisor --config F --data-dir D --port P --section S``."""
    parser = argparse.ArgumentParser(prog="trainsvc-launch-supervisor")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--section", default="TRAINING")
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args(argv)
    tee = Tee(args.log)
    out = Reporter(stream=tee, colour=False)  # type: ignore[arg-type]
    cfg = load_launch_config(args.config)
    return int(supervise(cfg, args.data_dir, args.port, args.section, out, tee))


if __name__ == "__main__":
    sys.exit(main())
