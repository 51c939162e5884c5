"""``python -m trainsvc_launchers.distributed``: a data-parallel run on a fixed host list.

The real trainer runs as 2 processes on localhost; a remote host is only checked as
the ``ssh`` command line it would get (no second machine here).
"""

from __future__ import annotations

import io
import json
import socket
import sys
import textwrap
from pathlib import Path

import pytest
from trainsvc_checkpoint import load
from trainsvc_launchers.distributed import DistributedLaunch, LaunchError, launch_run, main, parse

TRAINER = f"{sys.executable} -m trainsvc_trainer._cli"

TINY = """\
[env]
height = 8
width = 8
n_agents = 4
n_envs = 4
episode_length = 8
[policy]
hidden = 8
[train]
rollout_length = 4
seed = 3
total_steps = {total}
compile_cache_dir = "{cache}"
[log]
progress = false
frame_interval = 0
save_interval = 5
keep_last = 100
checkpoint_dir = "{ck}"
"""

# process 1 of the first launch is killed (-9) once step 5 is saved; later launches run normally
FLAKY = textwrap.dedent(
    """
    import os, pathlib, subprocess, sys, time
    marker, ck = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    args = sys.argv[3:]
    if args[args.index("--process-id") + 1] == "1" and not marker.exists():
        marker.touch()
        proc = subprocess.Popen(args)
        while proc.poll() is None and not (ck / "step_5.safetensors").exists():
            time.sleep(0.02)
        proc.kill()
        sys.exit(137)
    os.execv(args[0], args)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dry_run_prints_each_process_command(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--hosts", "gpu1,gpu2", "--port", "9000", "--workdir", "/srv/run w", "--dry-run"]
    assert main([*argv, "--", "--config", "run.toml"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["host"] for r in records] == ["gpu1", "gpu2"]
    remote = records[1]["command"]
    assert remote[:2] == ["ssh", "gpu2"]
    assert remote[2] == (
        "cd '/srv/run w' && exec trainsvc-train --config run.toml --coordinator gpu1:9000 "
        "--num-processes 2 --process-id 1"
    )


def test_local_hosts_run_without_ssh() -> None:
    launch = DistributedLaunch(("localhost", "127.0.0.1"), 1234, ("--config", "r.toml"))
    assert launch.command(1, resume=True) == [
        "trainsvc-train",
        "--config",
        "r.toml",
        "--train.resume-from",
        "latest",
        "--coordinator",
        "localhost:1234",
        "--num-processes",
        "2",
        "--process-id",
        "1",
    ]


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--hosts", ","], "--hosts"),
        (["--hosts", "a b,c"], "--hosts"),
        (["--hosts", "localhost,gpu2"], "--hosts"),
        (["--hosts", "a,b", "--port", "0"], "--port"),
        (["--hosts", "a,b", "--restarts", "-1"], "--restarts"),
        (["--hosts", "a,b", "--", "--process-id", "1"], "train args"),
    ],
)
def test_bad_input_names_the_flag(argv: list[str], field: str) -> None:
    with pytest.raises(LaunchError) as info:
        parse(argv)
    assert info.value.field == field


def test_a_killed_process_relaunches_all_and_resumes(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    toml = tmp_path / "run.toml"
    toml.write_text(TINY.format(total=40, cache=tmp_path / "jax", ck=ck))
    flaky = tmp_path / "flaky.py"
    flaky.write_text(FLAKY)
    command = f"{sys.executable} {flaky} {tmp_path / 'killed'} {ck} {TRAINER}"
    launch, _ = parse(
        [
            "--hosts",
            "127.0.0.1,127.0.0.1",
            "--port",
            str(_free_port()),
            "--train-command",
            command,
            "--",
            "--config",
            str(toml),
            "--distributed-timeout",
            "20",
        ]
    )
    out = io.StringIO()
    code = launch_run(launch, restarts=1, out=out)
    log = out.getvalue()
    (tmp_path / "launch.log").write_text(log)
    assert code == 0, log
    assert "[launcher] attempt 1 of 2 failed" in log, log
    assert "[p0] Resumed from" in log and "[p1] Resumed from" in log, log
    resumed_at = int(log.split("[p0] Resumed from")[1].split("at step ")[1].split()[0])
    assert resumed_at >= 5
    assert json.loads(load(ck / "step_40.safetensors")["meta"])["step"] == 40
    steps = [json.loads(line)["step"] for line in (ck / "metrics.jsonl").read_text().splitlines()]
    assert steps[-(40 - resumed_at) :] == list(range(resumed_at + 1, 41))


def test_trainsvc_launch_has_the_distributed_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    from trainsvc_launchers._cli import main as launch_main

    argv = ["distributed", "--hosts", "gpu1,gpu2", "--dry-run", "--", "--steps", "5"]
    assert launch_main(argv) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["process"] for r in records] == [0, 1]
    assert records[0]["command"][:2] == ["ssh", "gpu1"]
    assert records[0]["command"][-1].endswith(
        "trainsvc-train --steps 5 --coordinator gpu1:8476 --num-processes 2 --process-id 0"
    )
    with pytest.raises(SystemExit):
        launch_main(["distributed", "--help"])
    assert "trainsvc-launch distributed" in capsys.readouterr().out
