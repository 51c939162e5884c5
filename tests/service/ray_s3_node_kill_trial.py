"""Trial (not a pytest test): a Ray node dies, its run resumes on another node from S3.

A run of ``trainsvc serve --backend ray --data-dir s3://... --auto-resume`` (moto's S3
server on 127.0.0.1; a head without CPUs and two 1-CPU nodes started without any
``AWS_*`` variables, by `ray_cluster_driver.Cluster`) trains on one node; that node's
raylet is SIGKILLed; the run must restart on the other node from the newest object
in the bucket. Prints one JSON object. Needs root; run it in a network namespace
with only ``lo`` (Ray binds the machine's address), from the repository root::

    ip netns add t && ip netns exec t ip link set lo up
    ip netns exec t .venv/bin/python tests/service/ray_s3_node_kill_trial.py /tmp/trial
    ip netns pids t | xargs -r kill -9; ip netns del t
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ray_cluster_driver as drv  # Cluster, Node
from trainsvc_checkpoint.testing import local_s3
from trainsvc_client import connect, pb

work = Path(sys.argv[1])
work.mkdir(parents=True, exist_ok=True)
stack = contextlib.ExitStack()
server = stack.enter_context(local_s3("bkt", key="k", secret="trial-secret"))
endpoint, env, s3 = server.endpoint, server.env, server.client
cluster = drv.Cluster(work, Path(f"/tmp/rnk{os.getpid()}"))
result = {}
svc = None
try:
    cluster.start(drv.Node("head", 0))
    cluster.start(drv.Node("node_a", 1, custom={"spot": 1}))
    cluster.start(drv.Node("node_b", 1, custom={"spot": 1}))
    lport = drv.free_port()
    log = (work / "svc.log").open("ab")
    svc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from trainsvc import main; main()",
            "serve",
            "--listen",
            f"127.0.0.1:{lport}",
            "--metrics-listen",
            "",
            "--log-format",
            "json",
            "--backend",
            "ray",
            "--ray-address",
            cluster.address,
            "--auto-resume",
            "--data-dir",
            "s3://bkt/svc",
            "--state-dir",
            str(work / "state"),
            "--storage-option",
            f"endpoint_url={endpoint}",
        ],
        env={**drv.RAY_ENV, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    c = connect(f"127.0.0.1:{lport}")
    deadline = time.monotonic() + 120
    while True:
        try:
            c.list_runs_page(page_size=1, timeout=2)
            break
        except Exception:
            assert time.monotonic() < deadline and svc.poll() is None, "service did not start"
            time.sleep(0.5)
    tiny = {
        "num_agents": 4,
        "field_height": 8,
        "field_width": 8,
        "num_envs": 2,
        "rollout_length": 4,
        "frame_interval": 1,
        "policy.hidden": 8,
    }
    run = c.create_run(
        "emergence",
        step_budget=1_000_000,
        seed=1,
        config=tiny,
        checkpoint_policy=pb.CheckpointPolicy(interval_steps=20, keep_last=3),
        resources={"custom": {"spot": 1}},
    )
    rid = run.name.split("/")[1]
    prefix = f"svc/runs/{rid}/checkpoints/"

    def steps():
        r = s3.list_objects_v2(Bucket="bkt", Prefix=prefix)
        return sorted(
            int(o["Key"].rsplit("step_", 1)[1].split(".")[0])
            for o in r.get("Contents", [])
            if "step_" in o["Key"]
        )

    def messages():
        return [e.message for e in c.stream_events(run.name, timeout=30)]

    t = time.monotonic()
    while not (c.get_run(run.name).step >= 200 and steps()):
        assert time.monotonic() - t < 240, c.get_run(run.name)
        time.sleep(0.2)
    ids = {n: cluster.node_id(n) for n in ("node_a", "node_b")}

    def node_of(message: str) -> str:
        node = message.split()[4]  # "worker on Ray node <id> (<host>), ..."
        return next(n for n, i in ids.items() if i.startswith(node) or node.startswith(i))

    name = node_of(next(m for m in messages() if m.startswith(drv.MARKER)))
    result["first_node"] = name
    before = steps()
    t_kill = time.monotonic()
    cluster.kill(name)
    result["objects_at_kill"] = before
    # wait: the run restarted on the other node and trains past its restored step
    while True:
        msgs = messages()
        started = [m for m in msgs if m.startswith(drv.MARKER)]
        restored = [m for m in msgs if m.startswith("restored step")]
        run_now = c.get_run(run.name)
        if (
            len(started) >= 2
            and restored
            and run_now.state == pb.Run.RUNNING
            and run_now.step > int(restored[-1].split()[2]) + 40
        ):
            break
        assert time.monotonic() - t_kill < 240, (run_now, msgs[-10:])
        time.sleep(0.3)
    result["training_again_s"] = round(time.monotonic() - t_kill, 1)
    result["second_node"] = node_of(started[-1])
    result["restored"] = restored[-1][:200]
    result["interrupted"] = [m[:160] for m in msgs if m.startswith("interrupted")]
    result["reconciled"] = [m[:300] for m in msgs if "reconciled" in m]
    result["objects_now"] = steps()
    result["ok"] = True
except Exception:
    import traceback

    result["error"] = traceback.format_exc()[-2500:]
finally:
    if svc is not None:
        with contextlib.suppress(ProcessLookupError):  # it may have exited (a start-up error)
            os.killpg(svc.pid, signal.SIGKILL)
        svc.wait()
    subprocess.run([drv.RAY, "stop", "--force"], capture_output=True)
    stack.close()
    secret_seen = "trial-secret" in (work / "svc.log").read_text(errors="replace")
    result["secret_in_service_log"] = secret_seen
    print(json.dumps(result))
