"""One real multi-node Ray cluster on this host, shared by every Ray backend scenario.

Run by `test_ray_backend.py` inside a network namespace that has only ``lo``
(Ray binds the machine's own address): ``ip netns exec NS python
ray_cluster_driver.py WORK_DIR CONFIG_JSON [SUITE_TEST ...]`` (the runs' emergence
config; the service tests to run on the Ray backend). It prints one JSON object
(the last line of its output) that the tests assert on, a section per scenario
with its error if it failed; it ends every process of the namespace whatever
happens.

The cluster, started once (2 CPUs' worth of real work at most; the CPU counts are
Ray's logical ones):

- ``head``: no CPUs (the services' Ray drivers attach to it, so killing a worker
  node never takes a service along);
- ``node_a``: 3 CPUs and ``spot: 2``, a custom resource only it has at first;
- ``node_b``: 3 CPUs and a GPU (``--num-gpus 1``; no real GPU needed: Ray hands
  out the device number and sets ``CUDA_VISIBLE_DEVICES`` for the actor);
- ``node_c`` (``spot: 2``) joins later, as node_a's replacement.

Scenarios, in order:

1. ``suite``: the service tests named on the command line, with
   ``TRAINSVC_TEST_BACKEND=ray`` (every `trainsvc serve` they start places its
   workers on this cluster); their JUnit report, summarised.
2. Two services: ``auto`` (``--auto-resume``, ``--ray-listen 127.0.0.1:PORT``) and
   ``manual`` (``--ray-listen 0.0.0.0:0``), and a third that must fail to listen.
   On ``auto``: requests no node has (64 CPUs, 2 GPUs) wait PENDING with the reason;
   a 1-GPU run lands on node_b and its worker sees the device; a ``spot`` run
   streams frames, pauses, checkpoints and resumes; its TCP connection is cut
   (``ss -K``) while node_a lives: INTERRUPTED, restarted. On ``manual``: a
   ``spot`` run. node_c joins; node_a's raylet is SIGKILLed: the auto run continues
   on node_c at once, the manual one waits INTERRUPTED until ResumeRun.
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
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from trainsvc_api.v1 import trainsvc_pb2 as pb
from trainsvc_api.v1 import trainsvc_pb2_grpc as pb_grpc

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RAY = str(Path(sys.executable).parent / "ray")
RAY_ENV = {
    **os.environ,
    # Notice a killed raylet in about 6 s (its health checks fail at once; Ray's defaults
    # take 15 s) while a node stalled by a busy machine, whose checks fail only after
    # their 10 s timeout each, keeps its place for about a minute (the cluster lives
    # through the whole session; with 500 ms x 3 it once died in a 30 s stall of the
    # shared 2-CPU machine).
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "6",
    "RAY_health_check_initial_delay_ms": "0",
    # No idle Python workers started ahead of need (one per logical CPU otherwise).
    "RAY_prestart_worker_first_driver": "0",
}
COMMON = ["--object-store-memory", "100000000", "--disable-usage-stats"]
MARKER = "worker on Ray node "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    """A Ray node to start: its name and Ray resources."""

    name: str
    cpus: int
    gpus: int = 0
    custom: dict[str, float] = field(default_factory=dict)


class Cluster:
    """``ray start`` nodes on this host, by name."""

    def __init__(self, work: Path, temp_dir: Path) -> None:
        self.work, self.temp_dir = work, temp_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.slow_starts: list[str] = []
        """Nodes whose ``ray start`` gave up waiting while their raylet ran on."""

    def start(self, node: Node) -> None:
        """Start a node; ``head`` is the head node (start it first).

        A node has the custom resource of its name (``{"node_a": 1}``) beside its own.
        Nodes start one at a time: two ``ray start`` at once on one host can time out.
        ``ray start`` gives up when its raylet has not registered within 30 s (fixed in
        Ray), which a loaded 2-CPU machine can exceed: a start that gave up while its
        raylet runs is let be (it registers late; the scenarios wait for their runs),
        and one whose raylet is gone is tried once more (the head on a new port).
        """
        for attempt in (1, 2):
            if self._start(node):
                return
            if attempt == 1 and node.name == "head":
                self.port = free_port()
                self.address = f"127.0.0.1:{self.port}"
        raise AssertionError(f"ray start ({node.name}) failed twice")

    def _start(self, node: Node) -> bool:
        """One ``ray start``; whether the node runs (see `start`)."""
        where = ["--resources", json.dumps({node.name: 1, **node.custom})]
        if node.name == "head":
            where += ["--head", "--port", str(self.port), "--include-dashboard=false",
                      "--temp-dir", str(self.temp_dir)]  # fmt: skip
        else:
            where += ["--address", self.address]
        args = [*where, "--num-cpus", str(node.cpus), "--num-gpus", str(node.gpus), *COMMON]
        with (self.work / f"ray-{node.name}.log").open("ab") as out:
            proc = subprocess.Popen([RAY, "start", *args], env=RAY_ENV, stdout=out, stderr=out)
        if proc.wait(120) == 0:
            return True
        try:
            self._raylet(node.name)
        except LookupError:
            self.slow_starts.append(f"{node.name}: failed")
            return False
        self.slow_starts.append(node.name)
        return True

    def node_id(self, name: str) -> str:
        """The node id of the named node (its raylet's command line names both)."""
        return self._raylet(name)[1]

    def kill(self, name: str) -> None:
        """SIGKILL the named node's raylet."""
        os.kill(self._raylet(name)[0], signal.SIGKILL)

    def _raylet(self, name: str) -> tuple[int, str]:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                args = (proc / "cmdline").read_bytes().split(b"\x00")
            except OSError:
                continue
            if not args or not args[0].endswith(b"/raylet"):
                continue
            flags = dict(a.decode(errors="replace").partition("=")[::2] for a in args[1:])
            listed = flags.get("--static_resource_list", "").split(",")[::2]  # name,value,...
            if name in listed:
                return int(proc.name), flags["--node_id"]
        raise LookupError(f"no raylet of node {name}")


class Service:
    """A `trainsvc serve --backend ray` on the cluster, in its own session."""

    def __init__(self, work: Path, name: str, cluster: Cluster, *extra: str) -> None:
        self.port = free_port()
        self.log_path = work / f"service-{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from trainsvc import main; main()", "serve",
             "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(work / f"data-{name}"),
             "--metrics-listen", "", "--backend", "ray", "--ray-address", cluster.address,
             *extra],
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.TrainServiceStub(self.channel)

    def ready(self) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=90)

    def stop(self) -> int | None:
        """SIGTERM (it checkpoints and exits); SIGKILL of its session if that fails."""
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
            return None


def events(stub: pb_grpc.TrainServiceStub, name: str) -> list[pb.Event]:
    req = pb.StreamEventsRequest(name=name, from_sequence=0, follow=False)
    return list(stub.StreamEvents(req, timeout=10))


def nodes_of(stub: pb_grpc.TrainServiceStub, name: str) -> list[str]:
    """The Ray nodes the run's workers reported, in order."""
    return [e.message.split(MARKER, 1)[1].split()[0] for e in events(stub, name)
            if MARKER in e.message]  # fmt: skip


def story(stub: pb_grpc.TrainServiceStub, name: str, into: dict[str, Any]) -> None:
    """The run's nodes, states, messages and restarts, for the test to assert on."""
    evs = events(stub, name)
    into["nodes"] = nodes_of(stub, name)
    into["states"] = [pb.Run.State.Name(e.state) for e in evs if e.state]
    into["messages"] = [e.message[:300] for e in evs]
    into["restarts"] = stub.GetRun(pb.GetRunRequest(name=name)).restarts


def wait(stub: pb_grpc.TrainServiceStub, name: str, pred: Any, what: str, timeout: float) -> pb.Run:
    deadline = time.monotonic() + timeout
    while True:
        run = stub.GetRun(pb.GetRunRequest(name=name), timeout=10)
        if pred(run):
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {run}")
        time.sleep(0.2)


def create(stub: pb_grpc.TrainServiceStub, run_id: str, custom: dict[str, float] | None = None,
           **resources: Any) -> pb.Run:  # fmt: skip
    run = pb.Run(
        kind=pb.Run.EMERGENCE,
        step_budget=1_000_000,
        checkpoint_policy=pb.CheckpointPolicy(interval_steps=20, keep_last=3),
        resources=pb.Resources(custom=custom or {}, **resources),
    )
    for key, value in json.loads(sys.argv[2]).items():
        run.emergence.overrides[key] = json.dumps(value)
    return stub.CreateRun(pb.CreateRunRequest(run=run, run_id=run_id), timeout=60)


def state(stub: pb_grpc.TrainServiceStub, name: str) -> str:
    return pb.Run.State.Name(stub.GetRun(pb.GetRunRequest(name=name), timeout=10).state)


def newest_checkpoint(stub: pb_grpc.TrainServiceStub, name: str) -> int:
    ckpts = stub.ListCheckpoints(pb.ListCheckpointsRequest(parent=name), timeout=10).checkpoints
    return max(c.step for c in ckpts)


@contextmanager
def section(result: dict[str, Any], name: str) -> Iterator[dict[str, Any]]:
    """Record a scenario's findings under ``name``, its failure as ``name``'s ``error``."""
    part: dict[str, Any] = result.setdefault(name, {})
    t0 = time.monotonic()
    try:
        yield part
    except Exception:
        part["error"] = traceback.format_exc()[-3000:]
    finally:
        part["wall_s"] = round(time.monotonic() - t0, 1)


def run_suite(cluster: Cluster, work: Path, tests: list[str], part: dict[str, Any]) -> None:
    """The service tests on the Ray backend: each test's outcome from the JUnit report."""
    report = work / "suite.xml"
    env = {**os.environ, "TRAINSVC_TEST_BACKEND": "ray",
           "TRAINSVC_TEST_RAY_ADDRESS": cluster.address}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0",
         "--basetemp", str(work / "suite-tmp"), "--junitxml", str(report), *tests],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    part["exit"] = out.returncode
    part["output_tail"] = out.stdout[-4000:] + out.stderr[-2000:]
    cases = []
    for case in ET.parse(report).iter("testcase"):
        outcome, detail = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "skipped" if child.tag == "skipped" else "failed"
                detail = (child.get("message") or "")[:500]
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}.py::{case.get('name')}"
        cases.append({"test": name, "outcome": outcome, "s": float(case.get("time", 0)),
                      "detail": detail})  # fmt: skip
    part["cases"] = cases


def gpu_runs(svc: Service, cluster: Cluster, part: dict[str, Any]) -> None:
    """A 1-GPU run lands on node_b, the only GPU node; 2 GPUs: PENDING with the reason."""
    stub = svc.stub
    big = create(stub, "two-gpus", gpus=2)
    part["two_gpus_state"] = pb.Run.State.Name(big.state)
    part["two_gpus_message"] = big.state_message
    run = create(stub, "one-gpu", gpus=1)
    wait(stub, run.name, lambda r: r.state == pb.Run.RUNNING and r.step > 0, "one-gpu RUNNING", 120)
    part["gpu_node"] = cluster.node_id("node_b")
    story(stub, run.name, part)
    part["stopped"] = pb.Run.State.Name(stub.StopRun(pb.StopRunRequest(name=run.name)).state)
    part["two_gpus_state_later"] = state(stub, big.name)
    part["two_gpus_stopped"] = pb.Run.State.Name(
        stub.StopRun(pb.StopRunRequest(name=big.name)).state
    )


def control(stub: pb_grpc.TrainServiceStub, name: str, part: dict[str, Any]) -> None:
    """A frame, then pause, checkpoint and resume: the same calls as with a local worker."""
    frames = stub.StreamFrames(pb.StreamFramesRequest(name=name), timeout=30)
    part["frame_step"] = next(iter(frames)).step
    frames.cancel()
    part["paused_state"] = pb.Run.State.Name(
        stub.PauseRun(pb.PauseRunRequest(name=name), timeout=60).state
    )
    part["checkpoint_while_paused"] = stub.SaveCheckpoint(
        pb.SaveCheckpointRequest(name=name), timeout=60
    ).name
    part["resumed_state"] = pb.Run.State.Name(
        stub.ResumeRun(pb.ResumeRunRequest(name=name), timeout=60).state
    )


def keepalive_timers(both_ends: str) -> list[str]:
    """The TCP timers (``ss -o``) of a worker connection's two ends, once both show the
    keepalive timer (a busy end may show its retransmit timer for a moment)."""
    lines: list[str] = []
    for _ in range(25):
        out = subprocess.run(["ss", "-tnoH", "state", "established", both_ends],
                             capture_output=True, text=True, check=False).stdout  # fmt: skip
        lines = [line.split("timer:", 1)[-1] for line in out.splitlines()]
        if len(lines) == 2 and all("keepalive" in t for t in lines):
            break
        time.sleep(0.2)
    return lines


def partition(svc: Service, name: str, port: int, part: dict[str, Any]) -> None:
    """Cut the run's worker connection (both ends, ``ss -K``) while node_a lives."""
    base = svc.stub.GetRun(pb.GetRunRequest(name=name)).step
    wait(svc.stub, name, lambda r: r.step >= base + 25, "steps past a checkpoint", 120)
    part["newest_checkpoint_before_cut"] = newest_checkpoint(svc.stub, name)
    both_ends = f"( sport = :{port} or dport = :{port} )"
    part["timers"] = keepalive_timers(both_ends)
    cut = subprocess.run(
        ["ss", "-K", "state", "established", both_ends], capture_output=True, text=True, check=False
    )
    cut_at = time.monotonic()
    part["ss_exit"], part["ss_output"] = cut.returncode, (cut.stdout + cut.stderr)[-1000:]
    wait(svc.stub, name, lambda r: r.restarts >= 1, "the restart after the cut", 60)
    part["detected_s"] = round(time.monotonic() - cut_at, 1)
    back = wait(svc.stub, name, lambda r: r.state == pb.Run.RUNNING, "RUNNING after the cut", 120)
    wait(svc.stub, name, lambda r: r.step >= back.step + 5, "training after the cut", 120)
    part["running_again_s"] = round(time.monotonic() - cut_at, 1)


def node_death(cluster: Cluster, auto: Service, manual: Service, names: dict[str, str],
               result: dict[str, Any]) -> None:  # fmt: skip
    """node_c joins; node_a dies; the auto run moves on at once, the manual one on ResumeRun."""
    cluster.start(Node("node_c", cpus=2, custom={"spot": 2}))
    for svc, key in ((auto, "auto"), (manual, "manual")):
        run = svc.stub.GetRun(pb.GetRunRequest(name=names[key]))
        wait(svc.stub, names[key], lambda r, s=run.step: r.step >= s + 25, "a new checkpoint", 120)
        result[key]["newest_checkpoint_before_kill"] = newest_checkpoint(svc.stub, names[key])
    result["node_a_id"] = cluster.node_id("node_a")
    cluster.kill("node_a")
    killed_at = time.monotonic()
    with section(result, "manual") as part:
        stub, name = manual.stub, names["manual"]
        lost = wait(stub, name, lambda r: r.state == pb.Run.INTERRUPTED, "INTERRUPTED", 90)
        part["interrupted_s"] = round(time.monotonic() - killed_at, 1)
        part["interrupted_message"] = lost.state_message
        time.sleep(3)
        part["state_3s_later"] = state(stub, name)
        part["resume_run_state"] = pb.Run.State.Name(
            stub.ResumeRun(pb.ResumeRunRequest(name=name), timeout=60).state
        )
    for svc, key in ((auto, "auto"), (manual, "manual")):
        with section(result, key) as part:
            stub, name = svc.stub, names[key]
            gone = result["node_a_id"]

            def moved(r: pb.Run, stub: Any = stub, name: str = name, gone: str = gone) -> bool:
                return r.state == pb.Run.RUNNING and nodes_of(stub, name)[-1:] != [gone]

            back = wait(stub, name, moved, "RUNNING on another node", 150)
            again = wait(stub, name, lambda r, s=back.step: r.step >= s + 10, "training on", 120)
            part["resumed_running_s"] = round(time.monotonic() - killed_at, 1)
            part["step_after"] = again.step
            story(stub, name, part)
            part["stopped_state"] = pb.Run.State.Name(
                stub.StopRun(pb.StopRunRequest(name=name), timeout=60).state
            )


def scenarios(cluster: Cluster, work: Path, result: dict[str, Any]) -> None:
    """Scenario 2 of the module docstring."""
    listen_port = free_port()
    auto = Service(
        work, "auto", cluster, "--auto-resume", "--ray-listen", f"127.0.0.1:{listen_port}"
    )
    manual = Service(work, "manual", cluster, "--ray-listen", "0.0.0.0:0")
    # An address of no interface here: the service must refuse to start, naming the flag.
    bad = subprocess.Popen(
        [sys.executable, "-c", "from trainsvc import main; main()", "serve", "--listen",
         f"127.0.0.1:{free_port()}", "--data-dir", str(work / "data-bad"), "--metrics-listen", "",
         "--backend", "ray", "--ray-address", cluster.address, "--ray-listen", "192.0.2.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    names: dict[str, str] = {}
    try:
        auto.ready()
        manual.ready()
        with section(result, "bad_listen") as part:
            part["output"] = bad.communicate(timeout=120)[0][-2000:]
            part["exit"] = bad.returncode
        with section(result, "auto") as part:
            big = create(auto.stub, "too-big", cpus=64)
            part["too_big_state"] = pb.Run.State.Name(big.state)
            part["too_big_message"] = big.state_message
            part["listen_port"] = listen_port
        with section(result, "gpu") as part:
            gpu_runs(auto, cluster, part)
        with section(result, "auto") as part:
            names["auto"] = create(auto.stub, "on-ray", {"spot": 1}).name
            names["manual"] = create(manual.stub, "on-ray", {"spot": 1}).name
            for key, svc in (("auto", auto), ("manual", manual)):
                run = wait(svc.stub, names[key], lambda r: r.state == pb.Run.RUNNING and r.step > 0,
                           "RUNNING", 120)  # fmt: skip
                result.setdefault(key, {})["first_node"] = nodes_of(svc.stub, names[key])[0]
                result[key]["first_running_step"] = run.step
            control(auto.stub, names["auto"], part)
        with section(result, "partition") as part:
            partition(auto, names["auto"], listen_port, part)
        with section(result, "node_death") as part:
            node_death(cluster, auto, manual, names, result)
        with section(result, "auto") as part:
            part["too_big_state_later"] = state(auto.stub, "runs/too-big")
            part["too_big_stopped"] = pb.Run.State.Name(
                auto.stub.StopRun(pb.StopRunRequest(name="runs/too-big")).state
            )
    finally:
        if bad.poll() is None:
            bad.kill()
        for key, svc in (("auto", auto), ("manual", manual)):
            part = result.setdefault(key, {})
            part["service_exit"] = svc.stop()
            if part["service_exit"] != 0:  # why, for the test's failure message
                part["service_log_tail"] = svc.log_path.read_text(errors="replace")[-4000:]


def end_namespace() -> None:
    """SIGKILL every other process of this network namespace: the Ray cluster and the
    services (unlike ``ray stop``, this never touches Ray processes outside it)."""
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
    tests = sys.argv[3:]
    result: dict[str, Any] = {}
    t0 = time.monotonic()
    # Ray's sockets live under its temp dir: keep the path short (108-byte socket paths).
    ray_tmp = Path(tempfile.mkdtemp(prefix="tsray-", dir="/tmp"))
    try:
        cluster = Cluster(work, ray_tmp)
        cluster.start(Node("head", cpus=0))
        cluster.start(Node("node_a", cpus=3, custom={"spot": 2}))
        cluster.start(Node("node_b", cpus=3, gpus=1))
        result["cluster_up_s"] = round(time.monotonic() - t0, 1)
        result["slow_starts"] = cluster.slow_starts
        if tests:
            with section(result, "suite") as part:
                run_suite(cluster, work, tests, part)
        scenarios(cluster, work, result)
        result["ok"] = True
    except Exception:
        result["ok"] = False
        result["error"] = traceback.format_exc()[-3000:]
    finally:
        if not result.get("ok") or any(
            "error" in v for v in result.values() if isinstance(v, dict)
        ):
            for log in sorted(work.glob("*.log")):
                result[log.name] = log.read_text(errors="replace")[-3000:]
        end_namespace()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        result["total_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
