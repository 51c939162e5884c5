"""`trainsvc serve --backend ray`: runs' workers as Ray actors on a real multi-node cluster.

The cluster test runs `ray_cluster_driver.py` in a network namespace with only
``lo`` (Ray binds the machine's own address, and the namespace keeps the
cluster, the service and its client off the host's network); it needs root
and ``ip netns``. The resource checks and the start-up error need neither.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from trainsvc_api.v1 import trainsvc_pb2 as pb
from trainsvc_api.v1 import trainsvc_pb2_grpc as pb_grpc

pytest.importorskip("ray")

HERE = Path(__file__).resolve().parent
TINY = {"num_agents": 4, "field_height": 8, "field_width": 8, "num_envs": 2,
        "rollout_length": 4, "frame_interval": 1, "policy.hidden": 8}  # fmt: skip
"""conftest's TINY emergence config (the driver script gets it on its command line)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _create(address: str, run_id: str, resources: pb.Resources) -> pb.Run:
    run = pb.Run(kind=pb.Run.EMERGENCE, step_budget=4, resources=resources)
    for key, value in TINY.items():
        run.emergence.overrides[key] = json.dumps(value)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.TrainServiceStub(channel)
        return stub.CreateRun(pb.CreateRunRequest(run=run, run_id=run_id), timeout=60)


@pytest.mark.parametrize(
    ("resources", "field", "detail"),
    [
        (pb.Resources(cpus=-1), "run.resources.cpus", ">= 0"),
        (pb.Resources(cpus=1.5), "run.resources.cpus", "whole number"),
        (pb.Resources(gpus=float("nan")), "run.resources.gpus", "finite"),
        (pb.Resources(memory_bytes=-5), "run.resources.memory_bytes", ">= 0"),
        (pb.Resources(custom={"CPU": 1}), "run.resources.custom['CPU']", "built-in"),
        (pb.Resources(custom={"node a": 1}), "run.resources.custom['node a']", "letters"),
        (pb.Resources(custom={"node_a": 0}), "run.resources.custom['node_a']", "> 0"),
    ],
)
def test_bad_resource_requests_name_the_field(
    start_service: Callable[..., Any], resources: pb.Resources, field: str, detail: str
) -> None:
    svc = start_service()
    with pytest.raises(grpc.RpcError) as err:
        _create(svc.address, "bad", resources)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "") and detail in (err.value.details() or "")


def test_resource_request_is_kept_with_the_run(start_service: Callable[..., Any]) -> None:
    """The local backend runs the worker here whatever the request; the run keeps it."""
    svc = start_service()
    want = pb.Resources(cpus=1, gpus=0.5, memory_bytes=1 << 30, custom={"node_a": 1})
    run = _create(svc.address, "kept", want)
    assert run.resources == want
    with grpc.insecure_channel(svc.address) as channel:
        stub = pb_grpc.TrainServiceStub(channel)
        deadline = time.monotonic() + 180
        while (got := stub.GetRun(pb.GetRunRequest(name=run.name))).state != pb.Run.COMPLETED:
            assert time.monotonic() < deadline, got
            assert got.state != pb.Run.FAILED, got
            time.sleep(0.2)
    assert got.resources == want


@pytest.mark.parametrize("address", ["unreachable", "", "not-an-address"])
def test_ray_backend_start_up_errors_name_the_flag(tmp_path: Path, address: str) -> None:
    """Nothing listens there (or no address at all): the service refuses to start."""
    if address == "unreachable":
        address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        [sys.executable, "-c", "from trainsvc import main; main()", "serve",
         "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "data"),
         "--metrics-listen", "", "--backend", "ray", "--ray-address", address],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr[-2000:]
    assert "--ray-address" in out.stderr, out.stderr[-2000:]


def _netns_available() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("ip") is not None


def _drive(tmp_path: Path, *mode: str) -> dict[str, Any]:
    """Run `ray_cluster_driver.py` in a fresh network namespace; its JSON result."""
    ns = f"trainsvc-ray-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True, check=False).returncode:
        pytest.skip("`ip netns add` is not permitted here")
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, str(HERE / "ray_cluster_driver.py"),
             str(tmp_path), json.dumps(TINY), *mode],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        for pid in pids.stdout.split():
            subprocess.run(["kill", "-9", pid], check=False)
        subprocess.run(["ip", "netns", "del", ns], check=False)
    lines = out.stdout.strip().splitlines()
    assert lines, out.stderr[-3000:]
    r: dict[str, Any] = json.loads(lines[-1])
    assert r["ok"], "\n".join(f"{k}: {v}" for k, v in r.items())
    return r


def _continued_on_another_node(r: dict[str, Any]) -> int:
    """Placed on node_a, then on node_b from the newest checkpoint, steps continuous;
    returns the step it restarted from."""
    first, second = r["nodes"]
    assert first == r["first_node"] and second != first
    messages: list[str] = r["messages"]
    assert any(m.startswith(f"interrupted: its Ray node {first[:12]} died") for m in messages), (
        messages
    )
    started = [int(m.rsplit(" ", 1)[1]) for m in messages if m.startswith("worker started at")]
    restored = started[-1]
    lost_at = next(i for i, m in enumerate(messages) if m.startswith("interrupted: "))

    def saved(part: list[str]) -> list[int]:
        return [int(m.split("step ", 1)[1].split(" ", 1)[0]) for m in part
                if m.startswith("checkpoint saved")]  # fmt: skip

    before, after = saved(messages[:lost_at]), saved(messages[lost_at:])
    # The newest checkpoint: at least the newest the dead worker reported (ResumeRun also
    # indexes one it wrote but could not report before its node died).
    assert restored >= max(before) >= r["newest_checkpoint_before_kill"] > 0, [
        m for m in messages if not m.startswith("checkpoint saved")
    ]
    assert f"restored step {restored} from" in " ".join(messages), messages
    assert r["step_after"] > restored
    assert before == sorted(before) and after == sorted(after), messages
    assert all(step > restored for step in after), (restored, after)  # none went back
    assert r["stopped_state"] == "STOPPED" and r["service_exit"] == 0
    return restored


@pytest.mark.skipif(not _netns_available(), reason="needs root and `ip netns`")
def test_run_survives_its_ray_node_dying(tmp_path: Path) -> None:
    """--auto-resume: placed by its resources on node_a; node_a's raylet killed; the run
    goes INTERRUPTED and continues on node_b at once."""
    r = _drive(tmp_path)

    # No node has 64 CPUs: the run waits, PENDING, saying why; StopRun ends it.
    assert r["too_big_state"] == "PENDING" and r["too_big_state_later"] == "PENDING"
    assert "no node of the cluster has it" in r["too_big_message"], r["too_big_message"]
    assert "cpus=64" in r["too_big_message"]
    assert r["too_big_stopped"] == "STOPPED"

    # The control plane over the worker's TCP connection, as with local workers.
    assert r["frame_step"] > 0
    assert r["paused_state"] == "PAUSED" and r["resumed_state"] == "RUNNING"
    assert r["checkpoint_while_paused"].startswith("runs/on-ray/checkpoints/")

    # Placed on node_a (the only node with a CPU), then on node_b after node_a died.
    _continued_on_another_node(r)
    assert r["states"][-3:] == ["INTERRUPTED", "PENDING", "RUNNING"], r["states"]
    assert r["restarts"] == 1


@pytest.mark.skipif(not _netns_available(), reason="needs root and `ip netns`")
def test_run_waits_interrupted_without_auto_resume(tmp_path: Path) -> None:
    """Without --auto-resume the run of a dead node stays INTERRUPTED until ResumeRun,
    which places it on the node that is left; a crash loop on a Ray node still FAILS."""
    r = _drive(tmp_path, "manual")
    assert r["interrupted_message"].startswith("interrupted: its Ray node ")
    assert "ResumeRun continues from the newest checkpoint" in r["interrupted_message"]
    assert r["state_3s_later"] == "INTERRUPTED"
    _continued_on_another_node(r)
    assert r["states"][-3:] == ["INTERRUPTED", "PENDING", "RUNNING"], r["states"]
    assert r["restarts"] == 0  # not a crash of the worker

    # A worker that keeps crashing on a healthy node (the fault hook at step 5, before any
    # checkpoint): a crash loop, FAILED, exactly as with local workers.
    message = r["crash_state_message"]
    assert message.startswith("crash loop: the worker crashed 3 times without step progress")
    assert "(fault injection hook)" in message, message
    assert len(r["crash_nodes"]) == 3 and r["crash_service_exit"] == 0
