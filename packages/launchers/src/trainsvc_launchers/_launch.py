"""The ``local``, ``h100`` and ``m4`` targets: start, watch the first steps, say how to reconnect."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trainsvc_checkpoint import CheckpointError, parse_checkpoint_file_name, verify

from trainsvc_launchers import _platform
from trainsvc_launchers._background import spawn_detached
from trainsvc_launchers._config import LaunchConfig
from trainsvc_launchers._crashloop import CrashLoopError, correct_resume, record_resume
from trainsvc_launchers._envexec import wrap
from trainsvc_launchers._files import write_json_atomic
from trainsvc_launchers._lifecycle import record_launch
from trainsvc_launchers._output import ExitCode, Reporter
from trainsvc_launchers._preflight import run_preflight
from trainsvc_launchers._service import cli
from trainsvc_launchers._supervisor import run_state

__all__ = ["find_latest_checkpoint", "launch", "log_path", "m4_config"]

WATCH_CALL_S = 10.0
"""The longest `trainsvc-cli runs get` call of the watch before it looks at the log again."""
# A traceback, our own error lines, a command-line tool's "error:" or "prog: error:" line
_FATAL = re.compile(
    r"Traceback \(most recent call last\)|❌ ERROR|^(?:[\w.-]+: )?error:|\bFATAL\b", re.MULTILINE
)
_STARTED = re.compile(r"worker started at step (\d+)")
M4_MAX_ENVS = 4
M4_MAX_INTERVAL = 200


def log_path(logs_dir: Path, now: dt.datetime | None = None) -> Path:
    """``logs/training_YYYYMMDD_HHMMSS.log`` (with ``_2``, ``_3``... if that second is taken)."""
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d_%H%M%S")
    path = logs_dir / f"training_{stamp}.log"
    n = 2
    while path.exists():
        path = logs_dir / f"training_{stamp}_{n}.log"
        n += 1
    return path


@dataclass(frozen=True)
class LatestCheckpoint:
    """The newest valid checkpoint of a run found on disk."""

    path: Path
    step: int


def _valid(path: Path) -> bool:
    """Whether ``path`` passes :func:`trainsvc_checkpoint.verify` (every CRC); False if unreadable."""
    try:
        verify(path)
    except (CheckpointError, OSError):
        return False
    return True


def find_latest_checkpoint(data_dir: Path, run_id: str) -> LatestCheckpoint | None:
    """The newest valid checkpoint under ``data_dir`` in a directory named after ``run_id``.

    File names are read by :func:`trainsvc_checkpoint.parse_checkpoint_file_name`
    (periodic and emergency ones; for one step, the emergency file is tried first).
    """
    if not data_dir.is_dir():
        return None
    found = []
    for path in data_dir.rglob("*step_*.safetensors*"):
        name = parse_checkpoint_file_name(path)
        if name is not None and run_id in path.parent.parts:
            found.append((name, path))
    for name, path in sorted(found, key=lambda np_: np_[0].sort_key(), reverse=True):
        if _valid(path):
            return LatestCheckpoint(path, name.step)
    return None


def m4_config(cfg: LaunchConfig) -> LaunchConfig:
    """The Apple Silicon variant: at most :data:`M4_MAX_ENVS` environments, frequent checkpoints."""
    trainer = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg.trainer.items()}
    if cfg.kind == "emergence":
        env = trainer.setdefault("env", {})
        if isinstance(env, dict):
            env["n_envs"] = min(int(env.get("n_envs", M4_MAX_ENVS)), M4_MAX_ENVS)
    return LaunchConfig(
        kind=cfg.kind,
        run_id=cfg.run_id,
        seed=cfg.seed,
        step_budget=cfg.step_budget,
        interval_steps=min(cfg.interval_steps, M4_MAX_INTERVAL),
        keep_last=cfg.keep_last,
        checkpoint_mb=cfg.checkpoint_mb,
        min_ram_gb=cfg.min_ram_gb,
        trainer=trainer,
    )


class _Tmux:
    def __init__(self, socket: str | None) -> None:
        exe = shutil.which("tmux")
        if exe is None:
            raise FileNotFoundError(
                "tmux is not installed: `sudo apt-get install tmux` (or brew install tmux)"
            )
        self.base = [exe, *(["-L", socket] if socket else [])]

    def has(self, name: str) -> bool:
        return (
            subprocess.run(
                [*self.base, "has-session", "-t", f"={name}"], capture_output=True, check=False
            ).returncode
            == 0
        )

    def start(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        env_dir: Path | None = None,
    ) -> None:
        """Start ``argv`` in a new detached session; with ``env``, exactly that environment.

        A running tmux server gives new sessions its own environment, not the
        caller's: ``env`` travels in a private file read (and deleted) by the session.
        """
        if env is not None:
            fd, name_ = tempfile.mkstemp(prefix=f"{name}-", suffix=".env.json", dir=env_dir)
            os.close(fd)
            argv = wrap(argv, env, Path(name_))
        subprocess.run(
            [
                *self.base,
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "200",
                "-y",
                "50",
                shlex.join(argv),
            ],
            check=True,
        )

    def kill(self, name: str) -> None:
        subprocess.run(
            [*self.base, "kill-session", "-t", f"={name}"], capture_output=True, check=False
        )

    def attach_hint(self, name: str) -> str:
        return shlex.join([*(Path(self.base[0]).name, *self.base[1:]), "attach", "-t", name])


def _pid_alive(pid: int | None) -> bool:
    """Whether the detached supervisor (our child) is still running."""
    if pid is None:
        return True
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return done == 0


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def parse_env(items: list[str]) -> dict[str, str]:
    """``--env KEY=VALUE`` options as a mapping; a bad one raises ``ValueError`` naming it."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"--env: expected KEY=VALUE with KEY a variable name, got {item!r}")
        env[key] = value
    return env


def launch(args: argparse.Namespace, out: Reporter) -> ExitCode:
    """Run the ``local``, ``h100`` or ``m4`` target."""
    target = str(args.command)
    setup, training = f"SETUP-{target.upper()}", f"TRAINING-{target.upper()}"
    try:
        extra_env = parse_env(getattr(args, "env", None) or [])
    except ValueError as exc:
        out.error(setup, str(exc))
        return ExitCode.ERROR
    if target == "m4":  # the detached or foreground supervisor inherits this environment
        os.environ.update(extra_env)
    if not run_preflight(target, args.config, out, data_dir=args.data_dir):
        return ExitCode.ERROR
    from trainsvc_launchers._config import load_launch_config

    cfg = load_launch_config(args.config)
    if cfg.kind == "lora" and target in ("h100", "m4"):
        # The trainer checks its memory estimate against this platform's budget.
        train = cfg.trainer.setdefault("train", {})
        if isinstance(train, dict):
            train.setdefault("platform", target)
    if target == "m4":
        cfg = m4_config(cfg)
        out.info(
            setup,
            f"Apple Silicon config: env.n_envs <= {M4_MAX_ENVS}, a checkpoint every {cfg.interval_steps} steps",
        )
    tmux: _Tmux | None = None
    session = ""
    if target != "m4":
        try:
            tmux = _Tmux(getattr(args, "tmux_socket", None))
        except FileNotFoundError as exc:
            out.error(setup, str(exc))
            return ExitCode.ERROR
        session = args.session or f"trainsvc-{cfg.run_id}"
        if tmux.has(session):  # before anything is recorded: this is not a resume
            out.warning(
                setup, f"tmux session {session!r} is already running; not starting a second one"
            )
            _hints(out, training, cfg, args.port, tmux, session, None)
            return ExitCode.OK
    data_dir: Path = args.data_dir.resolve()
    latest = find_latest_checkpoint(data_dir, cfg.run_id)
    if latest is not None and latest.step >= cfg.step_budget:
        # the run is done: not a resume (three re-runs would look like a crash loop)
        out.success(
            setup,
            f"run {cfg.run_id} is already COMPLETED: step {latest.step} of {cfg.step_budget} "
            f"({latest.path.name}); nothing to do. To train more, raise step_budget, or set "
            "another run_id for a new run",
            step=latest.step,
            completed=True,
        )
        return ExitCode.OK
    if latest is not None:
        try:
            meta = record_resume(latest.path.parent, latest.path.name, latest.step)
        except CrashLoopError as exc:
            out.error(setup, str(exc))
            return ExitCode.CRASH_LOOP
        out.info(
            f"RESUME-{target.upper()}",
            f"resuming {cfg.run_id} from {latest.path.name} (step {latest.step}, resume #{meta.resume_count})",
            run_id=cfg.run_id,
            step=latest.step,
            checkpoint=str(latest.path),
            resume_count=meta.resume_count,
        )
    launch_cfg = data_dir / "launch" / f"{cfg.run_id}.launch.json"
    write_json_atomic(launch_cfg, cfg.to_dict())
    log = log_path(args.logs_dir.resolve())
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    argv = [
        "-m", "trainsvc_launchers._supervisor", "--config", str(launch_cfg),
        "--data-dir", str(data_dir), "--port", str(args.port), "--section", training, "--log", str(log),
    ]  # fmt: skip
    pid: int | None = None
    launch_state = {
        "target": target,
        "port": args.port,
        "log": str(log),
        "session": session or None,
        "tmux_socket": getattr(args, "tmux_socket", None),
    }
    if tmux is not None:
        env_dir = data_dir / "launch"
        tmux.start(session, [sys.executable, *argv], {**os.environ, **extra_env}, env_dir)
        record_launch(data_dir, cfg.run_id, **launch_state)
        out.success(
            setup, f"tmux session {session!r} started; log: {log}", session=session, log=str(log)
        )
    elif args.foreground:
        from trainsvc_launchers._supervisor import main as supervise_main

        record_launch(data_dir, cfg.run_id, **launch_state, pid=os.getpid())
        out.info(setup, f"running in the foreground; log: {log}")
        return ExitCode(supervise_main(argv[2:]))
    else:
        pid = spawn_detached(
            argv[2:], log.with_suffix(".console"), module="trainsvc_launchers._supervisor"
        )
        record_launch(data_dir, cfg.run_id, **launch_state, pid=pid)
        out.success(
            setup,
            f"started trainsvc and run {cfg.run_id} in the background (pid {pid}); log: {log}",
        )
    code = _watch(
        args,
        out,
        training,
        cfg,
        log,
        tmux,
        session,
        latest.step if latest else 0,
        pid,
        resume_dir=latest.path.parent if latest else None,
    )
    if code is ExitCode.OK:
        _hints(out, training, cfg, args.port, tmux, session, log)
    return code


def _watch(
    args: argparse.Namespace,
    out: Reporter,
    section: str,
    cfg: LaunchConfig,
    log: Path,
    tmux: _Tmux | None,
    session: str,
    start_step: int,
    pid: int | None = None,
    resume_dir: Path | None = None,
) -> ExitCode:
    """Follow the first ``--watch-steps`` steps; fail fast on an error in the log or a dead session.

    On a resume (``resume_dir``: where it was recorded), the step the service actually
    restored is reported and recorded when it differs from the newest file's.
    """
    server = f"127.0.0.1:{args.port}"
    goal = min(start_step + args.watch_steps, cfg.step_budget)
    restored_seen = resume_dir is None
    deadline = time.monotonic() + args.watch_timeout
    first: tuple[float, int] | None = None
    while time.monotonic() < deadline:
        fatal = _FATAL.search(log.read_text(encoding="utf-8", errors="replace"))
        alive = tmux.has(session) if tmux is not None else _pid_alive(pid)
        state, step, message = "UNKNOWN", 0, ""
        if not fatal:
            # short: a call can hang on a port another process holds, and the log's fatal
            # line or the session's end must be noticed soon (a timed-out call just repeats)
            got = cli(server, "runs", "get", cfg.run_id, timeout=WATCH_CALL_S)
            if got.ok:
                state, step = run_state(got.data)
                if isinstance(got.data, dict):
                    message = str(got.data.get("state_message", "") or "")
                if first is None and step > start_step and state == "RUNNING":
                    first = (time.monotonic(), step)
        started = _STARTED.search(message)
        if not restored_seen and started and state == "RUNNING" and resume_dir is not None:
            restored_seen = True
            restored = int(started.group(1))
            if restored != start_step:
                correct_resume(resume_dir, restored)
                out.warning(
                    f"RESUME-{args.command.upper()}",
                    f"the service restored run {cfg.run_id} at step {restored}, not {start_step} "
                    "(the newest checkpoint file was not usable or not indexed); recorded "
                    f"step {restored}",
                    run_id=cfg.run_id,
                    step=restored,
                    expected_step=start_step,
                )
                goal = min(restored + args.watch_steps, cfg.step_budget)
        if state == "FAILED" and "crash loop" in message:
            out.error(
                section,
                f"run {cfg.run_id} FAILED at step {step}: {message}; log: {log}",
                reason=message,
                step=step,
                log=str(log),
            )
            out.info(
                section,
                f"after fixing the cause, retry from its newest checkpoint: trainsvc-cli --server {server} "
                f"runs retry {cfg.run_id}",
            )
            if tmux is not None:
                tmux.kill(session)
            return ExitCode.CRASH_LOOP
        failed = state == "FAILED" or (not alive and state not in ("COMPLETED", "STOPPED"))
        if fatal or failed:
            why = (
                fatal.group(0)
                if fatal
                else f"run is {state}" + (f": {message}" if message else "")
                if state == "FAILED"
                else "the session exited"
            )
            tail = _tail(log)
            out.error(section, f"early failure ({why}); last lines of {log}:\n{tail}", log=str(log))
            if tmux is not None:
                tmux.kill(session)
            return ExitCode.ERROR
        if (step >= goal and state == "RUNNING") or state == "COMPLETED":
            out.success(section, f"run {cfg.run_id} passed step {step} without errors", step=step)
            if args.command == "m4":
                _eta(out, section, cfg, first, step)
            return ExitCode.OK
        time.sleep(1.0)
    out.warning(
        section,
        f"run {cfg.run_id} did not reach step {goal} within {args.watch_timeout:.0f} s; it keeps running",
    )
    return ExitCode.OK


def _eta(
    out: Reporter, section: str, cfg: LaunchConfig, first: tuple[float, int] | None, step: int
) -> None:
    if first is None or step <= first[1]:
        out.info(section, "not enough steps seen yet for a time estimate")
    else:
        rate = (step - first[1]) / max(time.monotonic() - first[0], 1e-9)
        eta = dt.timedelta(seconds=round((cfg.step_budget - step) / rate))
        out.info(
            section,
            f"throughput {rate:.2f} steps/s: about {eta} to step {cfg.step_budget}",
            steps_per_second=rate,
        )
    limit = _platform.thermal_speed_limit()
    if limit is not None and limit < 100:
        out.warning(
            section,
            f"the CPU is thermally throttled to {limit}%: the estimate may stretch; improve cooling",
        )


def _hints(
    out: Reporter,
    section: str,
    cfg: LaunchConfig,
    port: int,
    tmux: _Tmux | None,
    session: str,
    log: Path | None,
) -> None:
    server = f"127.0.0.1:{port}"
    if tmux is not None:
        out.info(section, f"reconnect: {tmux.attach_hint(session)}   (detach again with Ctrl-b d)")
    out.info(section, f"watch: trainsvc-cli --server {server} runs watch {cfg.run_id}")
    out.info(
        section,
        f"events: trainsvc-cli --server {server} runs events {cfg.run_id} --follow"
        + (
            f";  log: tail -f {log}"
            if log is not None
            else ";  logs: the newest logs/training_*.log"
        ),
    )
    out.info(
        section,
        f"dashboard: trainsvc-dashboard --server {server}; over SSH first: ssh -L {port}:127.0.0.1:{port} <box>",
    )
    if cfg.kind == "emergence":
        out.info(
            section,
            "W&B: with log.wandb = true the run logs under its run id; offline runs upload with `wandb sync`",
        )
    out.info(section, "re-running this command resumes from the latest checkpoint")
