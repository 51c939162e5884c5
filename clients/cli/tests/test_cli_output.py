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
    console.print(_cli._runs_table([_run(NAME), _run("runs/x")]))
    text = console.export_text()
    assert NAME in text, text
    assert max(len(line) for line in text.splitlines()) <= width


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
