"""The process that runs inside the tmux session (or detached on a Mac): service + run.

It starts ``trainsvc serve``, creates the run or resumes it (re-running a
launch resumes from the latest checkpoint instead of starting over), then
follows the run's events until it ends; everything it and the service print
goes to the session's log. SIGTERM/SIGHUP are passed on to the service, which
saves an emergency checkpoint.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from trainsvc_launchers._config import LaunchConfig, load_launch_config
from trainsvc_launchers._files import write_text_atomic
from trainsvc_launchers._output import ExitCode, Reporter
from trainsvc_launchers._service import cli, command, serve_command

__all__ = ["main", "run_state", "to_toml"]

READY_TIMEOUT_S = 180.0
_RESUMABLE = {"PAUSED", "INTERRUPTED"}
_TERMINAL = {"COMPLETED", "STOPPED", "FAILED"}


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
    cfg: LaunchConfig, data_dir: Path, port: int, section: str, out: Reporter
) -> ExitCode:
    """Start the service, create or resume the run, follow it; returns the exit code."""
    server = f"127.0.0.1:{port}"
    out.info(section, f"starting trainsvc on {server} (data in {data_dir})")
    service = subprocess.Popen(serve_command(port, data_dir))

    def forward(signum: int, frame: FrameType | None) -> None:
        service.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, forward)
    try:
        return _drive(cfg, data_dir, server, service, section, out)
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=120)
            except subprocess.TimeoutExpired:
                service.kill()


def _drive(
    cfg: LaunchConfig,
    data_dir: Path,
    server: str,
    service: subprocess.Popen[bytes],
    section: str,
    out: Reporter,
) -> ExitCode:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not cli(server, "runs", "list", timeout=30).ok:
        if service.poll() is not None:
            out.error(
                section, f"trainsvc exited with code {service.returncode} before it was ready"
            )
            return ExitCode.ERROR
        if time.monotonic() > deadline:
            out.error(
                section, f"trainsvc did not answer on {server} within {READY_TIMEOUT_S:.0f} s"
            )
            return ExitCode.ERROR
        time.sleep(0.5)
    out.success(section, f"trainsvc is up on {server}")
    got = cli(server, "runs", "get", cfg.run_id)
    if got.ok:
        state, step = run_state(got.data)
        if state in _RESUMABLE:
            resumed = cli(server, "runs", "resume", cfg.run_id)
            if not resumed.ok:
                out.error(section, f"resume of {cfg.run_id} failed: {resumed.stderr}")
                return ExitCode.ERROR
            out.success(section, f"resumed run {cfg.run_id} from step {step}")
        elif state in _TERMINAL:
            out.info(section, f"run {cfg.run_id} is already {state} at step {step}")
            return ExitCode.OK if state != "FAILED" else ExitCode.ERROR
        else:
            out.info(section, f"run {cfg.run_id} is {state} at step {step}")
    else:
        created = cli(server, *_create_args(cfg, data_dir))
        if not created.ok:
            out.error(section, f"creating run {cfg.run_id} failed: {created.stderr}")
            return ExitCode.ERROR
        out.success(section, f"created run {cfg.run_id} ({cfg.kind}, {cfg.step_budget} steps)")
    follow = subprocess.Popen(
        [*command("trainsvc-cli"), "runs", "events", cfg.run_id, "--follow", "--server", server]
    )
    while follow.poll() is None and service.poll() is None:
        time.sleep(1.0)
    if follow.poll() is None:
        follow.terminate()
    final = cli(server, "runs", "get", cfg.run_id)
    state, step = run_state(final.data) if final.ok else ("UNKNOWN", 0)
    if service.poll() is not None and state not in _TERMINAL:
        out.error(
            section, f"trainsvc exited with code {service.returncode} while the run was {state}"
        )
        return ExitCode.ERROR
    if state == "FAILED":
        message = final.data.get("state_message", "") if isinstance(final.data, dict) else ""
        out.error(section, f"run {cfg.run_id} FAILED at step {step}: {message}")
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
    args = parser.parse_args(argv)
    out = Reporter(colour=False)
    cfg = load_launch_config(args.config)
    return int(supervise(cfg, args.data_dir, args.port, args.section, out))


if __name__ == "__main__":
    sys.exit(main())
