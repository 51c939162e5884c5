"""The local/h100 targets: a real trainsvc in a real tmux session (on an isolated tmux server)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from trainsvc_launchers._cli import main
from trainsvc_launchers._crashloop import METADATA_FILE

pytestmark = [
    pytest.mark.slow(35),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

CONFIG = """
kind = "emergence"
run_id = "{run_id}"
seed = 1
step_budget = 100000

[checkpoint]
interval_steps = 50
keep_last = 2

[emergence.env]
height = 8
width = 8
n_agents = 2
n_envs = 2

[emergence.train]
rollout_length = 4
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def tmux_socket() -> Iterator[str]:
    """An isolated tmux server for the test, killed afterwards."""
    name = f"trainsvc-test-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["tmux", "-L", name, "kill-server"], capture_output=True, check=False)


def _args(tmp: Path, cfg: Path, port: int, sock: str) -> list[str]:
    return [
        "local", "--config", str(cfg), "--data-dir", str(tmp / "data"), "--logs-dir", str(tmp / "logs"),
        "--port", str(port), "--tmux-socket", sock, "--watch-steps", "100", "--watch-timeout", "300",
    ]  # fmt: skip


def _config(tmp: Path, run_id: str) -> Path:
    path = tmp / "run.toml"
    path.write_text(CONFIG.format(run_id=run_id), encoding="utf-8")
    return path


def _session_alive(sock: str, name: str) -> bool:
    return (
        subprocess.run(
            ["tmux", "-L", sock, "has-session", "-t", f"={name}"], capture_output=True, check=False
        ).returncode
        == 0
    )


def _stop_session(sock: str, name: str, log: Path) -> None:
    """Close the tmux session (as a dropped box would) and wait until trainsvc has checkpointed."""
    subprocess.run(["tmux", "-L", sock, "kill-session", "-t", f"={name}"], check=True)
    deadline = time.monotonic() + 180
    while "trainsvc stopped" not in log.read_text(encoding="utf-8") and time.monotonic() < deadline:
        time.sleep(0.5)


def _needs_service() -> None:
    pytest.importorskip("trainsvc", reason="the trainsvc service is not installed")
    pytest.importorskip("trainsvc_client", reason="trainsvc-cli is not installed")


def test_tmux_launch_logs_and_rerun_resumes(
    tmp_path: Path, tmux_socket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _needs_service()
    cfg, port = _config(tmp_path, "tmux-run"), _free_port()
    assert main(_args(tmp_path, cfg, port, tmux_socket)) == 0
    out = capsys.readouterr().out
    assert _session_alive(tmux_socket, "trainsvc-tmux-run")
    logs = sorted((tmp_path / "logs").iterdir())
    assert len(logs) == 1 and re.fullmatch(r"training_\d{8}_\d{6}\.log", logs[0].name)
    assert "[TRAINING-LOCAL] ✅ SUCCESS: created run tmux-run" in logs[0].read_text(
        encoding="utf-8"
    )
    assert f"reconnect: tmux -L {tmux_socket} attach -t trainsvc-tmux-run" in out
    assert "runs watch tmux-run" in out and "passed step" in out

    # Launching again while it runs does not start a second session.
    assert main(_args(tmp_path, cfg, port, tmux_socket)) == 0
    assert "already running" in capsys.readouterr().out
    assert sorted((tmp_path / "logs").iterdir()) == logs

    _stop_session(tmux_socket, "trainsvc-tmux-run", logs[0])
    assert main(_args(tmp_path, cfg, port, tmux_socket)) == 0
    out = capsys.readouterr().out
    step = int(re.search(r"resuming tmux-run from \S+ \(step (\d+)", out).group(1))  # type: ignore[union-attr]
    assert step >= 100
    second = sorted((tmp_path / "logs").iterdir())[-1]
    assert second != logs[0]
    assert f"resumed run tmux-run from step {step}" in second.read_text(encoding="utf-8")
    meta = json.loads(next((tmp_path / "data").rglob(METADATA_FILE)).read_text(encoding="utf-8"))
    assert meta["last_step"] == step and meta["resume_count"] == 1
    _stop_session(tmux_socket, "trainsvc-tmux-run", second)


def test_fail_fast_when_trainsvc_cannot_start(
    tmp_path: Path, tmux_socket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _needs_service()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(_args(tmp_path, _config(tmp_path, "busy-run"), port, tmux_socket))
    assert code == 1
    out = capsys.readouterr().out
    # The service's own error line (it cannot bind the port) is what the watch catches.
    assert "[TRAINING-LOCAL] ❌ ERROR: early failure (trainsvc: error:" in out
    assert "--listen: cannot bind" in out
    assert not _session_alive(tmux_socket, "trainsvc-busy-run")


def test_crash_loop_exits_2_before_starting(
    tmp_path: Path, tmux_socket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = pytest.importorskip("trainsvc_checkpoint")
    run_dir = tmp_path / "data" / "runs" / "loop-run" / "checkpoints"
    run_dir.mkdir(parents=True)
    ckpt.save(run_dir / "step_50.safetensors", {"w": np.arange(4, dtype=np.float32)})
    for _ in range(2):  # two earlier resumes from step 50 that died before making progress
        (run_dir / METADATA_FILE).write_text(
            json.dumps(
                {
                    "last_checkpoint": "step_50.safetensors",
                    "last_step": 50,
                    "resume_count": _ + 1,
                    "time": "t",
                }
            ),
            encoding="utf-8",
        )
    code = main(_args(tmp_path, _config(tmp_path, "loop-run"), _free_port(), tmux_socket))
    assert code == 2
    assert "crash loop: resumed from step 50" in capsys.readouterr().out
    assert not _session_alive(tmux_socket, "trainsvc-loop-run")


def test_the_launch_environment_reaches_a_session_of_a_running_tmux_server(
    tmp_path: Path, tmux_socket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tmux server already running (another session) gives new sessions its own
    environment: the launcher's variables must still reach the session."""
    from trainsvc_launchers._launch import _Tmux, parse_env

    subprocess.run(
        ["tmux", "-L", tmux_socket, "new-session", "-d", "-s", "holder", "sleep 600"],
        check=True,
        env={k: v for k, v in os.environ.items() if k != "TRAINSVC_TEST_VAR"},
    )
    monkeypatch.setenv("TRAINSVC_TEST_VAR", "from-the-launcher")
    env = {**os.environ, **parse_env(["EXTRA_VAR=a=b c"])}
    seen = tmp_path / "seen.json"
    script = (
        "import json, os, sys; json.dump({k: os.environ.get(k) for k in "
        "('TRAINSVC_TEST_VAR', 'EXTRA_VAR')}, open(sys.argv[1], 'w'))"
    )
    _Tmux(tmux_socket).start("child", [sys.executable, "-c", script, str(seen)], env, tmp_path)
    deadline = time.monotonic() + 60
    while not seen.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.2)
    assert json.loads(seen.read_text()) == {
        "TRAINSVC_TEST_VAR": "from-the-launcher",
        "EXTRA_VAR": "a=b c",
    }
    assert not list(tmp_path.glob("*.env.json"))  # the private copy is gone


def test_env_option_needs_key_equals_value() -> None:
    from trainsvc_launchers._launch import parse_env

    assert parse_env(["A=1", "B="]) == {"A": "1", "B": ""}
    with pytest.raises(ValueError, match="--env: expected KEY=VALUE"):
        parse_env(["1X=2"])


def test_a_completed_run_says_so_and_exits_0_every_time(
    tmp_path: Path, tmux_socket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = pytest.importorskip("trainsvc_checkpoint")
    run_dir = tmp_path / "data" / "runs" / "done-run" / "checkpoints"
    run_dir.mkdir(parents=True)
    ckpt.save(run_dir / "step_100000.safetensors", {"w": np.arange(4, dtype=np.float32)})
    for _ in range(3):  # three re-runs: no false crash loop
        code = main(_args(tmp_path, _config(tmp_path, "done-run"), _free_port(), tmux_socket))
        assert code == 0
        assert "run done-run is already COMPLETED: step 100000 of 100000" in (
            capsys.readouterr().out
        )
    assert not _session_alive(tmux_socket, "trainsvc-done-run")
    assert not (run_dir / METADATA_FILE).exists()  # never recorded as a resume


def test_watch_reports_a_crash_loop_with_its_reason_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from trainsvc_launchers import _launch
    from trainsvc_launchers._config import LaunchConfig
    from trainsvc_launchers._output import ExitCode, Reporter
    from trainsvc_launchers._service import CliResult

    reason = "crash loop: the worker died 3 times at step 40 (exit code -9, SIGKILL)"
    data = {"state": "FAILED", "step": 40, "state_message": reason}
    monkeypatch.setattr(_launch, "cli", lambda *a, **k: CliResult(0, data, ""))
    log = tmp_path / "training.log"
    log.write_text("starting\n", encoding="utf-8")
    args = argparse.Namespace(port=1, watch_steps=100, watch_timeout=30.0, command="local")
    cfg = LaunchConfig(run_id="looping")
    code = _launch._watch(args, Reporter(), "TRAINING-LOCAL", cfg, log, None, "", 0, None)
    assert code is ExitCode.CRASH_LOOP
    out = capsys.readouterr().out
    assert reason in out
    assert "runs retry looping" in out


def test_watch_records_the_step_the_service_actually_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The newest file says step 12000; the service restored 11500 (a SIGKILL left 12000
    unindexed or unusable): the launcher reports and records 11500."""
    import argparse

    from trainsvc_launchers import _launch
    from trainsvc_launchers._config import LaunchConfig
    from trainsvc_launchers._crashloop import record_resume
    from trainsvc_launchers._output import ExitCode, Reporter
    from trainsvc_launchers._service import CliResult

    record_resume(tmp_path, "step_12000.safetensors", 12000)
    answers = iter(
        [
            {"state": "PENDING", "step": 0, "state_message": "resuming from x"},
            {"state": "RUNNING", "step": 11510, "state_message": "worker started at step 11500"},
            {"state": "RUNNING", "step": 11700, "state_message": "worker started at step 11500"},
        ]
    )
    monkeypatch.setattr(_launch, "cli", lambda *a, **k: CliResult(0, next(answers), ""))
    monkeypatch.setattr(_launch.time, "sleep", lambda s: None)
    log = tmp_path / "training.log"
    log.write_text("", encoding="utf-8")
    args = argparse.Namespace(port=1, watch_steps=100, watch_timeout=60.0, command="local")
    cfg = LaunchConfig(run_id="killed", step_budget=100000)
    code = _launch._watch(
        args, Reporter(json_mode=True), "TRAINING-LOCAL", cfg, log, None, "", 12000, None,
        resume_dir=tmp_path,
    )  # fmt: skip
    assert code is ExitCode.OK
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    notice = next(ln for ln in lines if ln["section"] == "RESUME-LOCAL")
    assert notice["step"] == 11500 and notice["expected_step"] == 12000
    meta = json.loads((tmp_path / METADATA_FILE).read_text(encoding="utf-8"))
    assert meta["last_step"] == 11500 and meta["resume_count"] == 1


def test_status_logs_and_stop_of_a_launch(
    tmp_path: Path, tmux_socket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A recorded launch whose tmux session stands in for the supervisor: it writes the
    supervisor's last line when the session is closed."""
    from trainsvc_launchers._lifecycle import record_launch

    cfg = _config(tmp_path, "life-run")
    data = tmp_path / "data"
    log = tmp_path / "logs" / "training_20260101_000000.log"
    log.parent.mkdir()
    log.write_text("".join(f"line {i}\n" for i in range(100)), encoding="utf-8")
    script = f"trap 'echo trainsvc exited with code 0 >> {log}; exit 0' HUP TERM; while :; do sleep 0.2; done"
    subprocess.run(
        ["tmux", "-L", tmux_socket, "new-session", "-d", "-s", "trainsvc-life-run", script],
        check=True,
    )
    record_launch(
        data.resolve(), "life-run", target="local", port=_free_port(), log=str(log),
        session="trainsvc-life-run", tmux_socket=tmux_socket,
    )  # fmt: skip
    base = ["--config", str(cfg), "--data-dir", str(data)]
    assert main(["status", *base, "--json"]) == 0
    status = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (status["launch"], status["target"], status["log"]) == ("running", "local", str(log))

    assert main(["logs", *base, "--lines", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == ["line 97", "line 98", "line 99"]

    assert main(["stop", *base]) == 0
    assert "stopped; the run is checkpointed" in capsys.readouterr().out
    assert not _session_alive(tmux_socket, "trainsvc-life-run")
    assert main(["status", *base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["launch"] == "stopped"


def test_autostart_writes_a_systemd_user_unit_or_a_cron_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PATH", "/nonexistent")  # no systemctl: the unit is written, not enabled
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, "boot-run")
    assert main(["autostart", "--config", str(cfg), "--target", "h100"]) == 0
    unit = tmp_path / "xdg" / "systemd" / "user" / "trainsvc-boot-run.service"
    text = unit.read_text(encoding="utf-8")
    assert f"-m trainsvc_launchers h100 --config {cfg.resolve()}" in text
    assert "WantedBy=default.target" in text and f"WorkingDirectory={tmp_path}" in text
    assert "--cron" in capsys.readouterr().out
    assert main(["autostart", "--config", str(cfg), "--cron"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"@reboot cd {tmp_path} && ") and "trainsvc_launchers h100" in line
    assert main(["autostart", "--config", str(cfg), "--disable"]) == 0
    assert not unit.exists()
