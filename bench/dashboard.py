"""Benchmark the dashboard bridge's fan-out against a real trainsvc run.

A real service trains a tiny emergence run that publishes a frame every step;
a real `trainsvc-dashboard` bridge serves 1, 10 and 100 WebSocket clients, each
asking for the default 30 frames per second. Measured in the same run:

- frames per second delivered to each client, as a ratio to the 30/s asked for
  (the baseline: what a client would get from a bridge with no overhead);
- the bridge process's CPU time per second, in total and per client;
- the CPU this script spends receiving (the browsers' share, for scale);
- the service's training throughput (steps/s) with 100 dashboard clients, as a
  ratio to none (the baseline): three alternating rounds of none / 100 clients,
  the median of the per-round ratios (the machine's load drifts);
  target >= 0.95.

On a machine with two or more cores the service and its worker run on CPU 0,
and the bridge and this script's clients on CPU 1 (the browsers would be on
other machines), so the ratio shows what the dashboard costs the service itself
rather than two processes sharing one core; a second throughput row repeats
the comparison with everything on all cores.

Run: ``uv run --no-sync python bench/dashboard.py`` (``DASH_BENCH_WINDOW`` sets
the seconds per measurement, default 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from trainsvc_client import Client, connect, pb
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

BIN = Path(sys.executable).parent
WINDOW_S = float(os.environ.get("DASH_BENCH_WINDOW", "10"))
ASKED_HZ = 30.0
CLIENT_COUNTS = (1, 10, 100)
ROUNDS = 3
TINY = {
    "num_agents": 8,
    "field_height": 16,
    "field_width": 16,
    "num_envs": 2,
    "rollout_length": 8,
    "frame_interval": 1,
}
ALL_CPUS = set(range(os.cpu_count() or 1))
PINNED = len(ALL_CPUS) >= 2
SERVICE_CPUS = {0} if PINNED else ALL_CPUS
BRIDGE_CPUS = {1} if PINNED else ALL_CPUS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            out.extend(_tree(int(child)))
    return out


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """Move every thread of `pid` and of its descendants to `cpus`."""
    for p in _tree(pid):
        for task in Path(f"/proc/{p}/task").iterdir():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), cpus)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait(what: str, check: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"bench: timed out waiting for {what}")


def _steps_per_second(client: Client, run: str, window: float) -> float:
    a = client.get_run(run)
    t0 = time.monotonic()
    time.sleep(window)
    b = client.get_run(run)
    return (b.step - a.step) / (time.monotonic() - t0)


class Counter:
    """A WebSocket client that counts the frames it receives."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.ws:
            if isinstance(msg, bytes):
                self.frames += 1


async def _fan_out(
    url: str, n: int, bridge_pid: int, measure: Callable[[], float] | None
) -> dict[str, float]:
    clients = [Counter(await ws_connect(url, compression=None)) for _ in range(n)]
    await asyncio.sleep(2.0)  # let every client get its backlog and settle
    marks = [c.frames for c in clients]
    cpu0, t0 = _cpu_seconds(bridge_pid), time.monotonic()
    own0 = sum(os.times()[:2])
    steps = await asyncio.to_thread(measure) if measure else await asyncio.sleep(WINDOW_S)
    elapsed = time.monotonic() - t0
    cpu = (_cpu_seconds(bridge_pid) - cpu0) / elapsed
    own = (sum(os.times()[:2]) - own0) / elapsed
    rates = [(c.frames - m) / elapsed for c, m in zip(clients, marks, strict=True)]
    for c in clients:
        await c.ws.close()
        c.task.cancel()
    return {
        "mean": statistics.fmean(rates),
        "min": min(rates),
        "total": sum(rates),
        "cpu": cpu,
        "clients_cpu": own,
        "steps": float(steps or 0.0),
    }


def main() -> int:
    data = Path(tempfile.mkdtemp(prefix="dash-bench-"))
    address = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSVC_")}
    log = (data / "service.log").open("wb")
    service = subprocess.Popen(
        [str(BIN / "trainsvc"), "serve", "--listen", address, "--data-dir", str(data),
         "--metrics-listen", "127.0.0.1:0"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    os.sched_setaffinity(service.pid, SERVICE_CPUS)
    bridge: subprocess.Popen[str] | None = None
    client = connect(address, timeout=60.0)
    try:
        _wait("the service", lambda: client.list_runs_page() is not None)
        run = client.create_run(
            "emergence", step_budget=10**9, seed=0, config=TINY, display_name="dashboard bench"
        ).name
        print("bench: waiting for the run to start training (JAX start-up)...", file=sys.stderr)
        _wait("the run", lambda: (r := client.get_run(run)).state == pb.Run.RUNNING and r.step > 0)
        _set_affinity(service.pid, SERVICE_CPUS)
        time.sleep(3.0)  # past the first compile

        def throughput() -> float:
            return _steps_per_second(client, run, WINDOW_S)

        bridge = subprocess.Popen(
            [str(BIN / "trainsvc-dashboard"), "--server", address, "--listen", "127.0.0.1:0", "--json"],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert bridge.stdout is not None
        url = json.loads(bridge.stdout.readline())["url"].replace("http://", "ws://") + "ws"
        bridge_pid = bridge.pid
        _set_affinity(bridge_pid, BRIDGE_CPUS)
        os.sched_setaffinity(0, BRIDGE_CPUS)

        def alternate() -> tuple[float, float, float]:
            """Median steps/s with none and with 100 clients, and the median ratio."""
            none, loaded = [], []
            for _ in range(ROUNDS):
                none.append(throughput())
                fan = asyncio.run(_fan_out(url, max(CLIENT_COUNTS), bridge_pid, throughput))
                loaded.append(fan["steps"])
            ratios = [b / a for a, b in zip(none, loaded, strict=True)]
            return statistics.median(none), statistics.median(loaded), statistics.median(ratios)

        rows: dict[int, dict[str, float]] = {}
        for n in CLIENT_COUNTS:
            rows[n] = asyncio.run(_fan_out(url, n, bridge_pid, None))
        pinned = alternate()

        # The same comparison with every process free to use every core.
        _set_affinity(service.pid, ALL_CPUS)
        _set_affinity(bridge_pid, ALL_CPUS)
        os.sched_setaffinity(0, ALL_CPUS)
        shared = alternate()
        client.stop_run(run)
    finally:
        for proc in (bridge, service):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    print(
                        f"bench: pid {proc.pid} ignored SIGTERM for 60 s; killing it",
                        file=sys.stderr,
                    )
                    proc.kill()
                    proc.wait()
        if bridge is not None and bridge.stdout is not None:
            bridge.stdout.close()
        log.close()
        client.close()

    where = "service on CPU 0, bridge + clients on CPU 1" if PINNED else "all on shared cores"
    print(
        f"\ndashboard fan-out: tiny emergence run, a frame every step; clients ask {ASKED_HZ:g} frames/s;"
    )
    print(f"{WINDOW_S:g} s windows; {where}\n")
    print(f"{'clients':>7} | {'frames/s per client':>19} | {'vs asked 30/s':>13} | {'min client':>10} | "
          f"{'total frames/s':>14} | {'bridge CPU':>10} | {'CPU per client':>14} | {'receivers CPU':>13}")  # fmt: skip
    print("-" * 122)
    for n, r in rows.items():
        print(
            f"{n:>7} | {r['mean']:>19.1f} | {r['mean'] / ASKED_HZ:>13.2f} | {r['min']:>10.1f} | "
            f"{r['total']:>14.0f} | {100 * r['cpu']:>9.1f}% | {100 * r['cpu'] / n:>13.2f}% | "
            f"{100 * r['clients_cpu']:>12.1f}%"
        )
    print()
    print(f"{'training throughput (median of ' + str(ROUNDS) + ' rounds)':<52} | {'none':>8} | "
          f"{'100 clients':>11} | {'ratio':>6} | target")  # fmt: skip
    print("-" * 98)
    for label, (none, loaded, ratio), target in (
        (f"steps/s, {where}", pinned, ">= 0.95"),
        ("steps/s, all processes on all cores", shared, "(context: CPUs shared)"),
    ):
        print(f"{label:<52} | {none:>8.1f} | {loaded:>11.1f} | {ratio:>6.3f} | {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
