"""trainsvc-cli against a real service: --json outputs and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def cli(service: Any, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-c",
        "from trainsvc_client._cli import main; main()",
        *args,
        "--server",
        service.address,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_cli_json(shared_service: Any, tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(
        "num_agents = 4\nfield_height = 8\nfield_width = 8\nnum_envs = 2\nrollout_length = 4\n"
        "[policy]\nhidden = 8\n",
        encoding="utf-8",
    )
    out = cli(
        shared_service,
        "runs",
        "create",
        "--kind",
        "emergence",
        "--steps",
        "1000000",
        "--seed",
        "3",
        "--config",
        str(config),
        *("--cpus", "1", "--memory", "512M", "--resource", "node_a=1"),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)
    assert run["resources"] == {  # kept with the run (the Ray backend places by it)
        "cpus": 1.0,
        "gpus": 0.0,
        "memory_bytes": str(512 * 2**20),
        "custom": {"node_a": 1.0},
    }
    assert run["name"].startswith("runs/") and run["kind"] == "EMERGENCE"
    assert run["step_budget"] == "1000000" and run["emergence"]["num_agents"] == 4
    assert run["emergence"]["overrides"] == {"policy.hidden": "8"}

    got = cli(shared_service, "runs", "get", run["name"], "--json")
    assert got.returncode == 0 and json.loads(got.stdout)["name"] == run["name"]
    listed = cli(shared_service, "runs", "list", "--json")
    assert run["name"] in [r["name"] for r in json.loads(listed.stdout)["runs"]]

    stopped = cli(shared_service, "runs", "stop", run["name"], "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["state"] == "STOPPED"
    ckpts = cli(shared_service, "runs", "checkpoints", run["name"], "--json")
    assert ckpts.returncode == 0 and "checkpoints" in json.loads(ckpts.stdout)
    events = cli(shared_service, "runs", "events", run["name"], "--json")
    lines = [json.loads(line) for line in events.stdout.splitlines()]
    assert lines[0]["type"] == "STATE_CHANGED" and lines[-1]["state"] == "STOPPED"


def test_cli_errors_exit_1(shared_service: Any) -> None:
    missing = cli(shared_service, "runs", "get", "runs/nope", "--json")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    bad = cli(shared_service, "runs", "create", "--kind", "emergence", "--steps", "-3")
    assert bad.returncode == 1 and "run.step_budget" in bad.stderr
    kind = cli(shared_service, "runs", "create", "--kind", "chess", "--steps", "3")
    assert kind.returncode == 1 and "kind" in kind.stderr
    create = ("runs", "create", "--kind", "emergence", "--steps", "3")
    resource = cli(shared_service, *create, "--resource", "node_a")
    assert resource.returncode == 1 and "--resource: expected NAME=AMOUNT" in resource.stderr
    cpus = cli(shared_service, *create, "--cpus", "-1")
    assert cpus.returncode == 1 and "run.resources.cpus" in cpus.stderr


def test_serve_rejects_a_bad_worker_niceness(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "from trainsvc import main; main()", "serve"]
    cmd += ["--data-dir", str(tmp_path / "data"), "--worker-nice", "25"]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "--worker-nice" in bad.stderr and "0 to 19" in bad.stderr
    assert not (tmp_path / "data").exists()  # refused before touching anything


def test_a_second_service_on_a_port_in_use_fails_instead_of_sharing_it(
    shared_service: Any, tmp_path: Path
) -> None:
    """gRPC binds with SO_REUSEPORT by default: two services would split the calls between them."""
    cmd = [sys.executable, "-c", "from trainsvc import main; main()", "serve"]
    cmd += ["--listen", shared_service.address, "--data-dir", str(tmp_path / "other")]
    second = subprocess.run(
        [*cmd, "--metrics-listen", ""], capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 1
    assert "--listen: cannot bind" in second.stderr and shared_service.address in second.stderr
    with shared_service.client() as c:  # the first one still answers
        c.list_runs_page(page_size=1)


def test_runs_retry_continues_a_stopped_run_from_its_newest_checkpoint(
    shared_service: Any, tmp_path: Path
) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(
        "num_agents = 4\nfield_height = 8\nfield_width = 8\nnum_envs = 2\nrollout_length = 4\n",
        encoding="utf-8",
    )
    created = cli(
        shared_service,
        *("runs", "create", "--kind", "emergence", "--steps", "1000000", "--seed", "5"),
        *("--config", str(config), "--json"),
    )
    assert created.returncode == 0, created.stderr
    old = json.loads(created.stdout)
    # Still running: retry is for FAILED or STOPPED runs, and says so.
    early = cli(shared_service, "runs", "retry", old["name"])
    assert early.returncode == 1 and "retry is for FAILED or STOPPED runs" in early.stderr
    deadline = time.monotonic() + 120
    while (
        int(
            json.loads(cli(shared_service, "runs", "get", old["name"], "--json").stdout).get(
                "step", 0
            )
        )
        == 0
    ):
        assert time.monotonic() < deadline, "the run never trained"
        time.sleep(0.5)
    saved = cli(shared_service, "runs", "checkpoint", old["name"], "--json")
    assert saved.returncode == 0, saved.stderr
    stopped = cli(shared_service, "runs", "stop", old["name"], "--json")
    assert stopped.returncode == 0, stopped.stderr
    ckpts = json.loads(cli(shared_service, "runs", "checkpoints", old["name"], "--json").stdout)
    newest = max(int(c["step"]) for c in ckpts["checkpoints"])
    assert newest > 0

    retried = cli(shared_service, "runs", "retry", old["name"], "--json")
    assert retried.returncode == 0, retried.stderr
    new = json.loads(retried.stdout)
    assert new["name"] != old["name"]
    assert new["kind"] == "EMERGENCE" and new["seed"] == old["seed"]
    assert new["emergence"] == old["emergence"]
    # The new run's worker starts where the old one's newest checkpoint left off.
    deadline = time.monotonic() + 120
    while True:
        events = cli(shared_service, "runs", "events", new["name"], "--json").stdout
        if f"started at step {newest}" in events:
            break
        assert "started at step 0" not in events, events
        assert time.monotonic() < deadline, events
        time.sleep(0.5)
    assert cli(shared_service, "runs", "stop", new["name"]).returncode == 0
