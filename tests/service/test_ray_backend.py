"""`trainsvc serve --backend ray`: runs' workers as Ray actors on a real multi-node cluster.

The cluster tests share one run of `ray_cluster_driver.py` (one Ray cluster: a
head, node_a, node_b with a GPU, node_c joining later) in a network namespace
with only ``lo`` (Ray binds the machine's own address, and the namespace keeps
the cluster, the services and their clients off the host's network); they need
root and ``ip netns``. The driver also runs the service's lifecycle tests (`SUITE`)
on that cluster, with ``TRAINSVC_TEST_BACKEND=ray``. The resource checks and the
start-up errors need neither.
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

pytestmark = pytest.mark.slow(160)

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


SUITE = (
    "tests/service/test_e2e.py",
    "tests/service/test_restart_and_faults.py",
    # Worker priorities are those of local processes; on Ray the test only skips.
    "--deselect=tests/service/test_e2e.py::test_workers_run_nicer_than_the_service",
)
"""The service tests run again on the Ray backend (pytest arguments): lifecycle with a
frame stream, completion with a final checkpoint, listing, SIGKILL/SIGTERM of the
service and resuming, and a crash loop. `test_streams.py` is not among them: past the
worker's link its frames go through the same fan-out on both backends, and
`test_lifecycle` streams a Ray worker's frames (the suite is the cluster test's longest
part on 2 CPUs)."""


def test_worker_connections_probe_for_a_silent_partition() -> None:
    """A partition that drops packets (no reset) must still end a worker's connection:
    keepalive probes while idle, and a bound on unacknowledged data."""
    from multiprocessing.connection import Client, Listener

    from trainsvc._ray_backend import LINK_TIMEOUT_S, watch_link

    with Listener(("127.0.0.1", 0), family="AF_INET") as listener:
        client = Client(listener.address, family="AF_INET")
        server = listener.accept()
        for conn in (client, server):
            watch_link(conn)
            with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
                count = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
                interval = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
                assert idle + count * interval <= LINK_TIMEOUT_S + idle
                user = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
                assert user == LINK_TIMEOUT_S * 1000
        client.send("still works")
        assert server.recv() == "still works"
        client.close()
        server.close()


def _netns_available() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("ip") is not None


def _drive(work: Path, *tests: str) -> dict[str, Any]:
    """Run `ray_cluster_driver.py` in a fresh network namespace; its JSON result."""
    ns = f"trainsvc-ray-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True, check=False).returncode:
        pytest.skip("`ip netns add` is not permitted here")
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, str(HERE / "ray_cluster_driver.py"),
             str(work), json.dumps(TINY), *tests],
            capture_output=True, text=True, timeout=840, check=False,
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


ON_CLUSTER = pytest.mark.skipif(not _netns_available(), reason="needs root and `ip netns`")
"""The tests of the shared cluster below."""
CLUSTER_TIMEOUT_S = 900
"""The first cluster test waits for the whole driver run (about 4–6 minutes on 2 CPUs,
longer when the machine is shared); pytest's 600 s would cut it short."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The driver's findings: one cluster for every scenario below (and the suite)."""
    if not _netns_available():
        pytest.skip("needs root and `ip netns`")
    return _drive(tmp_path_factory.mktemp("ray"), *SUITE)


def _part(r: dict[str, Any], name: str) -> dict[str, Any]:
    """A scenario's findings; fails with its error (and the logs) if it failed."""
    part: dict[str, Any] = r.get(name, {})
    logs = {k: v for k, v in r.items() if k.endswith(".log")}
    assert "error" not in part, "\n".join([part["error"], *(f"{k}:\n{v}" for k, v in logs.items())])
    return part


def _saved(messages: list[str]) -> list[int]:
    return [int(m.split("step ", 1)[1].split(" ", 1)[0]) for m in messages
            if m.startswith("checkpoint saved")]  # fmt: skip


def _restored(messages: list[str]) -> list[int]:
    return [int(m.rsplit(" ", 1)[1]) for m in messages if m.startswith("worker started at")]


def _continued_after(part: dict[str, Any], why: str, newest_before: int) -> int:
    """The run was interrupted (``why``) and continued from its newest checkpoint, steps
    never going back; returns the step it restarted from."""
    messages: list[str] = part["messages"]
    lost_at = next((i for i, m in enumerate(messages) if m.startswith(f"interrupted: {why}")), -1)
    assert lost_at >= 0, messages
    restored = _restored(messages[lost_at:])[0]
    before, after = _saved(messages[:lost_at]), _saved(messages[lost_at:])
    # The newest checkpoint: at least the newest the worker reported (the restart also
    # indexes one it wrote but could not report before it was cut off).
    assert restored >= max(before) >= newest_before > 0, [
        m for m in messages if not m.startswith("checkpoint saved")
    ]
    assert f"restored step {restored} from" in " ".join(messages[lost_at:]), messages
    assert before == sorted(before) and after == sorted(after), messages
    assert all(step > restored for step in after if step), (restored, after)  # none went back
    return restored


@ON_CLUSTER
@pytest.mark.timeout(CLUSTER_TIMEOUT_S)
def test_lifecycle_suite_passes_on_the_ray_backend(cluster: dict[str, Any]) -> None:
    """`SUITE` with every worker a Ray actor: every test passes."""
    suite = _part(cluster, "suite")
    cases = suite["cases"]
    failed = [c for c in cases if c["outcome"] == "failed"]
    assert not failed and suite["exit"] == 0, (failed, suite["output_tail"])
    assert not [c for c in cases if c["outcome"] == "skipped"], cases
    passed = {c["test"] for c in cases if c["outcome"] == "passed"}
    assert {
        "test_e2e.py::test_lifecycle",
        "test_e2e.py::test_run_completes_with_a_final_checkpoint",
        "test_e2e.py::test_list_pages",
        "test_restart_and_faults.py::test_sigkill_of_the_whole_service_then_resume_matches_uninterrupted",
        "test_restart_and_faults.py::test_sigterm_checkpoints_and_auto_resume_continues",
        "test_restart_and_faults.py::test_crash_loop_ends_failed",
    } <= passed, passed
    assert len(passed) >= 6, passed


@ON_CLUSTER
@pytest.mark.timeout(CLUSTER_TIMEOUT_S)
def test_gpu_request_lands_on_the_gpu_node(cluster: dict[str, Any]) -> None:
    """gpus=1: placed on node_b (``--num-gpus 1``), whose device its worker sees;
    gpus=2: no node has them, PENDING with the reason until stopped."""
    gpu = _part(cluster, "gpu")
    assert gpu["nodes"] == [gpu["gpu_node"]], gpu
    started = next(m for m in gpu["messages"] if "worker on Ray node" in m)
    assert "devices CUDA_VISIBLE_DEVICES=0" in started, started
    assert gpu["stopped"] == "STOPPED"
    assert gpu["two_gpus_state"] == gpu["two_gpus_state_later"] == "PENDING"
    assert "gpus=2" in gpu["two_gpus_message"], gpu["two_gpus_message"]
    assert "no node of the cluster has it" in gpu["two_gpus_message"]
    assert gpu["two_gpus_stopped"] == "STOPPED"


@ON_CLUSTER
@pytest.mark.timeout(CLUSTER_TIMEOUT_S)
def test_workers_connect_to_the_ray_listen_address(cluster: dict[str, Any]) -> None:
    """--ray-listen HOST:PORT is where workers connect; 0.0.0.0 gives them Ray's address
    for the machine; an address not on this machine fails start-up naming the flag."""
    auto, manual = _part(cluster, "auto"), _part(cluster, "manual")
    first = next(m for m in auto["messages"] if "worker on Ray node" in m)
    assert first.endswith(f"connected to 127.0.0.1:{auto['listen_port']}"), first
    first = next(m for m in manual["messages"] if "worker on Ray node" in m)
    assert "connected to 0.0.0.0" not in first and "connected to " in first, first
    bad = _part(cluster, "bad_listen")
    assert bad["exit"] == 1, bad
    assert "--ray-listen 192.0.2.1:0: cannot listen there" in bad["output"], bad["output"]


@ON_CLUSTER
@pytest.mark.timeout(CLUSTER_TIMEOUT_S)
def test_cut_connection_interrupts_and_auto_resumes(cluster: dict[str, Any]) -> None:
    """The worker's TCP connection cut (``ss -K``, both ends) while its node lives: the
    run is INTERRUPTED (not a crash), its actor ended, and --auto-resume restarts it."""
    cut, auto = _part(cluster, "partition"), _part(cluster, "auto")
    assert cut["ss_exit"] == 0, cut
    # Both ends probe the connection (a silent partition ends it in LINK_TIMEOUT_S).
    assert len(cut["timers"]) == 2 and all("keepalive" in t for t in cut["timers"]), cut
    why = "its connection to the service was cut while its Ray node lived"
    _continued_after(auto, why, cut["newest_checkpoint_before_cut"])
    assert auto["nodes"][:2] == [auto["first_node"]] * 2  # spot: node_a only, until node_c


@ON_CLUSTER
@pytest.mark.timeout(CLUSTER_TIMEOUT_S)
def test_run_survives_its_ray_node_dying(cluster: dict[str, Any]) -> None:
    """--auto-resume: placed by its resources on node_a; node_a's raylet killed; the run
    goes INTERRUPTED and continues on node_c at once."""
    auto = _part(cluster, "auto")
    _part(cluster, "node_death")
    # No node has 64 CPUs: the run waits, PENDING, saying why; StopRun ends it.
    assert auto["too_big_state"] == "PENDING" and auto["too_big_state_later"] == "PENDING"
    assert "no node of the cluster has it" in auto["too_big_message"], auto["too_big_message"]
    assert "cpus=64" in auto["too_big_message"]
    assert auto["too_big_stopped"] == "STOPPED"

    # The control plane over the worker's TCP connection, as with local workers.
    assert auto["frame_step"] > 0
    assert auto["paused_state"] == "PAUSED" and auto["resumed_state"] == "RUNNING"
    assert auto["checkpoint_while_paused"].startswith("runs/on-ray/checkpoints/")

    node_a = cluster["node_a_id"]
    assert auto["first_node"] == node_a and auto["nodes"][-1] not in ("", node_a), auto["nodes"]
    # "died", or "stopped answering" when its actor's end is seen before the node's death
    restored = _continued_after(
        auto, f"its Ray node {node_a[:12]} ", auto["newest_checkpoint_before_kill"]
    )
    assert auto["step_after"] > restored
    assert auto["states"][-3:] == ["INTERRUPTED", "PENDING", "RUNNING"], auto["states"]
    assert auto["restarts"] == 2  # the cut connection, then the dead node
    assert auto["stopped_state"] == "STOPPED"
    assert auto["service_exit"] == 0, auto.get("service_log_tail")


@ON_CLUSTER
@pytest.mark.timeout(CLUSTER_TIMEOUT_S)
def test_run_waits_interrupted_without_auto_resume(cluster: dict[str, Any]) -> None:
    """Without --auto-resume the run of a dead node stays INTERRUPTED until ResumeRun,
    which places it on the node that is left (not counted as a restart)."""
    manual = _part(cluster, "manual")
    node_a = cluster["node_a_id"]
    assert manual["interrupted_message"].startswith(f"interrupted: its Ray node {node_a[:12]} ")
    assert "ResumeRun continues from the newest checkpoint" in manual["interrupted_message"]
    assert manual["state_3s_later"] == "INTERRUPTED"
    assert manual["nodes"][0] == node_a and manual["nodes"][-1] != node_a, manual["nodes"]
    restored = _continued_after(
        manual, f"its Ray node {node_a[:12]} ", manual["newest_checkpoint_before_kill"]
    )
    assert manual["step_after"] > restored
    assert manual["states"][-3:] == ["INTERRUPTED", "PENDING", "RUNNING"], manual["states"]
    assert manual["stopped_state"] == "STOPPED"
    assert manual["restarts"] == 0  # not a crash of the worker
    assert manual["service_exit"] == 0, manual.get("service_log_tail")
