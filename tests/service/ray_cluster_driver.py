"""A real two-node Ray cluster on this host, a `trainsvc serve --backend ray`, and a node's death.

Run by `test_ray_backend.py` inside a network namespace that has only ``lo``
(Ray binds the machine's own address): ``ip netns exec NS python
ray_cluster_driver.py WORK_DIR CONFIG_JSON [manual]`` (the run's emergence config;
``manual``: the service without ``--auto-resume``, then a crash loop on a Ray node). It prints one JSON object (the last line of
its output) that the test asserts on; it stops Ray and the service whatever
happens.

The cluster: a head node with no CPUs (the service's Ray driver attaches to it,
so killing a worker node never takes the service along), ``node_a`` (1 CPU)
and, once the run trains on node_a, ``node_b`` (1 CPU). The run requests
``cpus=1``: only node_a has it at first. Then node_a's raylet is SIGKILLed; with
``--auto-resume`` the run must go INTERRUPTED and continue on node_b from its
newest checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import grpc
from trainsvc_api.v1 import trainsvc_pb2 as pb
from trainsvc_api.v1 import trainsvc_pb2_grpc as pb_grpc

RAY = str(Path(sys.executable).parent / "ray")
RAY_ENV = {
    **os.environ,
    # Notice a dead node within about a second and a half (defaults: tens of seconds).
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_initial_delay_ms": "0",
}
COMMON = ["--object-store-memory", "100000000", "--disable-usage-stats"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_start(log: Path, *args: str, temp_dir: Path | None = None) -> subprocess.Popen[bytes]:
    """``ray start ARGS`` with its output in ``log``."""
    extra = ["--temp-dir", str(temp_dir)] if temp_dir else []
    with log.open("ab") as out:
        return subprocess.Popen(
            [RAY, "start", *args, *COMMON, *extra], env=RAY_ENV, stdout=out, stderr=out
        )


def raylet_pid(node_id: str) -> int:
    """The raylet process of the node ``node_id`` (its command line names it)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"/raylet\x00" in cmd and f"--node_id={node_id}".encode() in cmd:
            return int(proc.name)
    raise LookupError(f"no raylet of node {node_id}")


def events(stub: pb_grpc.TrainServiceStub, name: str) -> list[pb.Event]:
    req = pb.StreamEventsRequest(name=name, from_sequence=0, follow=False)
    return list(stub.StreamEvents(req, timeout=10))


def nodes_of(stub: pb_grpc.TrainServiceStub, name: str) -> list[str]:
    """The Ray nodes the run's workers reported, in order."""
    marker = "worker on Ray node "
    return [
        e.message.split(marker, 1)[1].split()[0] for e in events(stub, name) if marker in e.message
    ]


def wait(stub: pb_grpc.TrainServiceStub, name: str, pred: Any, what: str, timeout: float) -> pb.Run:
    deadline = time.monotonic() + timeout
    while True:
        run = stub.GetRun(pb.GetRunRequest(name=name), timeout=10)
        if pred(run):
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {run}")
        time.sleep(0.2)


def create(stub: pb_grpc.TrainServiceStub, run_id: str, **resources: Any) -> pb.Run:
    run = pb.Run(
        kind=pb.Run.EMERGENCE,
        step_budget=1_000_000,
        checkpoint_policy=pb.CheckpointPolicy(interval_steps=20, keep_last=3),
        resources=pb.Resources(**resources),
    )
    for key, value in json.loads(sys.argv[2]).items():
        run.emergence.overrides[key] = json.dumps(value)
    return stub.CreateRun(pb.CreateRunRequest(run=run, run_id=run_id), timeout=60)


def scenario(work: Path, ray_tmp: Path, auto: bool, result: dict[str, Any]) -> None:
    """``auto``: the service runs with ``--auto-resume`` (and the control calls are checked);
    otherwise the run must stay INTERRUPTED until ResumeRun."""
    t0 = time.monotonic()
    port = free_port()
    head = ray_start(
        work / "ray-head.log", "--head", "--port", str(port), "--num-cpus", "0",
        "--include-dashboard=false", temp_dir=ray_tmp,
    )  # fmt: skip
    assert head.wait(120) == 0, "ray start --head failed"
    node_a = ray_start(work / "ray-node_a.log", "--address", f"127.0.0.1:{port}",
                       "--num-cpus", "1", "--resources", '{"node_a": 1}')  # fmt: skip
    assert node_a.wait(120) == 0, "ray start (node_a) failed"
    result["cluster_up_s"] = round(time.monotonic() - t0, 1)

    svc_port = free_port()
    log = (work / "service.log").open("wb")
    service = subprocess.Popen(
        serve_cmd(work, svc_port, port, *(["--auto-resume"] if auto else [])),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    result["service_pid"] = service.pid
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{svc_port}")
        grpc.channel_ready_future(channel).result(timeout=90)
        stub = pb_grpc.TrainServiceStub(channel)

        if auto:  # A request no node can satisfy: PENDING with the reason, not FAILED.
            big = create(stub, "too-big", cpus=64)
            result["too_big_state"] = pb.Run.State.Name(big.state)
            result["too_big_message"] = big.state_message

        run = create(stub, "on-ray", cpus=1)
        name = run.name
        running = wait(
            stub, name, lambda r: r.state == pb.Run.RUNNING and r.step > 0, "RUNNING", 120
        )
        result["first_running_step"] = running.step
        first_nodes = nodes_of(stub, name)
        result["first_node"] = first_nodes[0] if first_nodes else ""

        if auto:  # The control plane over the TCP connection: frames, pause, checkpoint.
            control(stub, name, result)

        node_b = ray_start(work / "ray-node_b.log", "--address", f"127.0.0.1:{port}",
                           "--num-cpus", "1", "--resources", '{"node_b": 1}')  # fmt: skip
        assert node_b.wait(120) == 0, "ray start (node_b) failed"
        # Train past a periodic checkpoint after the pause one, then kill node_a's raylet.
        base = stub.GetRun(pb.GetRunRequest(name=name)).step
        wait(stub, name, lambda r: r.step >= base + 45, "steps past a checkpoint", 120)
        ckpts = stub.ListCheckpoints(pb.ListCheckpointsRequest(parent=name), timeout=10).checkpoints
        result["newest_checkpoint_before_kill"] = max(c.step for c in ckpts)
        os.kill(raylet_pid(result["first_node"]), signal.SIGKILL)
        killed_at = time.monotonic()
        result["step_at_kill"] = stub.GetRun(pb.GetRunRequest(name=name)).step

        if auto:
            wait(stub, name, lambda r: r.restarts >= 1, "the restart after the node's death", 90)
            result["restart_detected_s"] = round(time.monotonic() - killed_at, 1)
        else:
            lost = wait(stub, name, lambda r: r.state == pb.Run.INTERRUPTED, "INTERRUPTED", 90)
            result["interrupted_s"] = round(time.monotonic() - killed_at, 1)
            result["interrupted_message"] = lost.state_message
            time.sleep(3)
            later = stub.GetRun(pb.GetRunRequest(name=name))
            result["state_3s_later"] = pb.Run.State.Name(later.state)
            resumed = stub.ResumeRun(pb.ResumeRunRequest(name=name), timeout=60)
            result["resume_run_state"] = pb.Run.State.Name(resumed.state)
        back = wait(stub, name, lambda r: r.state == pb.Run.RUNNING, "RUNNING again", 150)
        again = wait(stub, name, lambda r: r.step >= back.step + 10, "training on", 120)
        result["resumed_running_s"] = round(time.monotonic() - killed_at, 1)
        result["step_after"] = again.step
        result["nodes"] = nodes_of(stub, name)
        evs = events(stub, name)
        result["states"] = [pb.Run.State.Name(e.state) for e in evs if e.state]
        result["messages"] = [e.message[:300] for e in evs]
        result["restarts"] = again.restarts

        stopped = stub.StopRun(pb.StopRunRequest(name=name), timeout=60)
        result["stopped_state"] = pb.Run.State.Name(stopped.state)
        if auto:
            big = stub.GetRun(pb.GetRunRequest(name="runs/too-big"))
            result["too_big_state_later"] = pb.Run.State.Name(big.state)
            big = stub.StopRun(pb.StopRunRequest(name="runs/too-big"), timeout=60)
            result["too_big_stopped"] = pb.Run.State.Name(big.state)
        channel.close()
        service.send_signal(signal.SIGTERM)
        result["service_exit"] = service.wait(60)
        if not auto:
            crash_loop(work, port, result)
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait(30)
        log.close()
        result["total_s"] = round(time.monotonic() - t0, 1)


def serve_cmd(work: Path, svc_port: int, ray_port: int, *extra: str) -> list[str]:
    """``trainsvc serve --backend ray`` on ``svc_port`` with the cluster at ``ray_port``."""
    return [sys.executable, "-c", "from trainsvc import main; main()", "serve",
            "--listen", f"127.0.0.1:{svc_port}", "--data-dir", str(work / "data"),
            "--metrics-listen", "", "--backend", "ray", "--ray-address",
            f"127.0.0.1:{ray_port}", *extra]  # fmt: skip


def crash_loop(work: Path, ray_port: int, result: dict[str, Any]) -> None:
    """A service whose workers crash at step 5 (the worker's fault-injection hook) on a
    healthy Ray node: the run must end FAILED as a crash loop, as with local workers."""
    svc_port = free_port()
    env = {**os.environ, "TRAINSVC_FAULT_CRASH_AT_STEP": "5"}
    with (work / "service-crash.log").open("wb") as log:
        service = subprocess.Popen(
            serve_cmd(work, svc_port, ray_port), env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{svc_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=90)
            stub = pb_grpc.TrainServiceStub(channel)
            name = create(stub, "crashy", cpus=1).name
            failed = wait(stub, name, lambda r: r.state == pb.Run.FAILED, "FAILED", 180)
            result["crash_state_message"] = failed.state_message
            result["crash_nodes"] = nodes_of(stub, name)
        service.send_signal(signal.SIGTERM)
        result["crash_service_exit"] = service.wait(60)
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait(30)


def control(stub: pb_grpc.TrainServiceStub, name: str, result: dict[str, Any]) -> None:
    """A frame, then pause, checkpoint and resume: the same calls as with a local worker."""
    frames = stub.StreamFrames(pb.StreamFramesRequest(name=name), timeout=30)
    result["frame_step"] = next(iter(frames)).step
    frames.cancel()
    paused = stub.PauseRun(pb.PauseRunRequest(name=name), timeout=60)
    result["paused_state"] = pb.Run.State.Name(paused.state)
    ckpt = stub.SaveCheckpoint(pb.SaveCheckpointRequest(name=name), timeout=60)
    result["checkpoint_while_paused"] = ckpt.name
    resumed = stub.ResumeRun(pb.ResumeRunRequest(name=name), timeout=60)
    result["resumed_state"] = pb.Run.State.Name(resumed.state)


def end_namespace() -> None:
    """SIGKILL every other process of this network namespace: the Ray cluster and the
    service (unlike ``ray stop``, this never touches Ray processes outside it)."""
    mine = Path("/proc/self/ns/net").readlink()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if (proc / "ns" / "net").readlink() == mine:
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:
            continue


def main() -> None:
    work = Path(sys.argv[1])
    result: dict[str, Any] = {}
    # Ray's sockets live under its temp dir: keep the path short (108-byte socket paths).
    ray_tmp = Path(tempfile.mkdtemp(prefix="tsray-", dir="/tmp"))
    try:
        scenario(work, ray_tmp, sys.argv[3:4] != ["manual"], result)
        result["ok"] = True
    except Exception:
        result["ok"] = False
        result["error"] = traceback.format_exc()[-3000:]
        for log in sorted(work.glob("*.log")):
            result[log.name] = log.read_text(errors="replace")[-3000:]
    finally:
        end_namespace()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
