"""trainsvc-cli without a service: the runs table in a narrow terminal and the
connection options given before the command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from trainsvc_client import _cli, pb
from typer.testing import CliRunner

NAME = "runs/emergence-20261202-175600-ab12cd34"


def _run(name: str) -> pb.Run:
    return pb.Run(
        name=name,
        kind=pb.Run.EMERGENCE,
        state=pb.Run.FAILED,
        step=123456,
        step_budget=1000000,
        steps_per_second=42.5,
        restarts=3,
        state_message="crash loop: the worker died 3 times at step 123456 without progress",
    )


@pytest.mark.parametrize("width", [80, 60])
def test_runs_table_keeps_the_name_whole_in_a_narrow_terminal(width: int) -> None:
    console = Console(width=width, record=True, color_system=None)
    console.print(_cli._runs_table([_run(NAME), _run("runs/x")], width))
    text = console.export_text()
    assert NAME in text, text
    assert max(len(line) for line in text.splitlines()) <= width
    # The state is a whole word too (a script greps for FAILED), and the step survives at 80.
    assert "FAILED" in text, text
    header = text.splitlines()[1]
    assert ("STEP" in header) == (width >= 80), text
    # Without room for its column, the message is printed below the table, whole.
    message = "crash loop: the worker died 3 times at step 123456 without progress"
    assert f"{NAME}: {message}" in " ".join(text.split()), text


def test_runs_table_shows_every_column_in_a_wide_terminal() -> None:
    console = Console(width=200, record=True, color_system=None)
    console.print(_cli._runs_table([_run(NAME)], 200))
    text = console.export_text()
    for word in ("emergence", "FAILED", "123456", "1000000", "42.5", "crash loop: the worker"):
        assert word in text, text


def test_connection_options_work_before_the_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("TRAINSVC_SERVER", "TRAINSVC_TOKEN", "TRAINSVC_TLS", "TRAINSVC_CA_CERT"):
        monkeypatch.setenv(var, "")  # restored after the test, whatever the CLI sets
        monkeypatch.delenv(var)
    seen: list[tuple[Any, ...]] = []

    def fake_client(*args: Any) -> Any:
        seen.append(args)
        raise typer.Exit(0)

    monkeypatch.setattr(_cli, "_client", fake_client)
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    runner = CliRunner()
    args = ["--server", "10.0.0.5:6000", "--token", "t0k", "--tls", "--ca-cert", str(ca)]
    result = runner.invoke(_cli.app, [*args, "runs", "watch", "r1"])
    assert result.exit_code == 0, result.output
    assert seen[-1] == ("10.0.0.5:6000", "t0k", True, ca)
    # given after the command, the command's own option wins
    result = runner.invoke(
        _cli.app, ["--server", "10.0.0.5:6000", "runs", "list", "--server", "h:1"]
    )
    assert result.exit_code == 0, result.output
    assert seen[-1][0] == "h:1"


class _FakeClient:
    """The calls `runs retry` makes, recorded."""

    def __init__(self, run: pb.Run, checkpoints: list[pb.Checkpoint]) -> None:
        self.run, self.checkpoints = run, checkpoints
        self.created: dict[str, Any] = {}

    def __enter__(self) -> _FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get_run(self, name: str) -> pb.Run:
        return self.run

    def list_checkpoints(self, name: str) -> list[pb.Checkpoint]:
        return self.checkpoints

    def create_run(self, kind: Any, **kwargs: Any) -> pb.Run:
        self.created = {"kind": kind, **kwargs}
        return pb.Run(name="runs/retried", kind=kind, state=pb.Run.PENDING)


def test_runs_retry_starts_a_new_run_from_the_newest_checkpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failed = _run(NAME)
    failed.seed = 7
    failed.emergence.num_agents = 12
    failed.checkpoint_policy.interval_steps = 500
    failed.max_restarts = 5
    ckpts = [
        pb.Checkpoint(name=f"{NAME}/checkpoints/step_{n}", step=n) for n in (1000, 123000, 120000)
    ]
    fake = _FakeClient(failed, ckpts)
    monkeypatch.setattr(_cli, "_client", lambda *a: fake)
    result = CliRunner().invoke(_cli.app, ["runs", "retry", NAME, "--id", "again"])
    assert result.exit_code == 0, result.output
    got = fake.created
    assert got["resume_from"] == f"{NAME}/checkpoints/step_123000"
    assert (got["kind"], got["step_budget"], got["seed"], got["run_id"]) == (
        pb.Run.EMERGENCE,
        1000000,
        7,
        "again",
    )
    assert got["config"].num_agents == 12
    assert got["checkpoint_policy"].interval_steps == 500 and got["max_restarts"] == 5
    assert "step 123000" in " ".join(result.output.split())


def test_runs_retry_refuses_a_running_run_or_one_without_checkpoints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = _run(NAME)
    running.state = pb.Run.RUNNING
    monkeypatch.setattr(_cli, "_client", lambda *a: _FakeClient(running, []))
    result = CliRunner().invoke(_cli.app, ["runs", "retry", NAME])
    assert result.exit_code == 1 and "retry is for FAILED" in result.output
    monkeypatch.setattr(_cli, "_client", lambda *a: _FakeClient(_run(NAME), []))
    result = CliRunner().invoke(_cli.app, ["runs", "retry", NAME])
    assert result.exit_code == 1 and "no checkpoint to retry from" in result.output
