"""Benchmark of the trainsvc service: training throughput under frame fan-out, and control latency.

Starts a real `trainsvc serve` on loopback with one emergence run (the
trainer's default config, a frame every step), then measures over fixed
windows:

- training steps/s with 0, 10 and 100 StreamFrames subscribers (each asking
  for 30 frames/s, as the dashboard does), as a ratio to 0 subscribers
  (the 0-subscriber baseline is measured before and after, and averaged);
  target >= 0.95 at 100;
- frames delivered per subscriber per second;
- GetRun and ListRuns latency p50/p99 while 100 subscribers stream
  (target p99 <= 10 ms on loopback).

With --pin the service and its run worker are pinned to CPU 0 and the
subscribers and the measuring client to the other CPUs, so that the
subscribers stand in for clients on other machines and the ratio shows what
fan-out costs the service itself (on 2 CPUs the service's sending then
competes with the trainer for CPU 0). By default every process shares every CPU.

Usage: python bench/service.py [--window 10] [--subscribers 10,100] [--pin | --no-pin]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

from trainsvc_client import Client, connect, pb


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_CLIENT_CPUS: set[int] = set()


def _pin_clients() -> None:
    """Keep this process (subscribers, measuring client) off the service's CPU, when pinning."""
    if _CLIENT_CPUS:
        os.sched_setaffinity(0, _CLIENT_CPUS)


def _subscriber_process(
    address: str, run: str, n: int, conn: Connection, cpus: set[int] | None = None
) -> None:
    """Hold `n` StreamFrames subscribers (threads) and report their frame counts on request."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    counts = [0] * n
    clients = [connect(address) for _ in range(max(1, n // 10))]
    streams = [clients[i % len(clients)].stream_frames(run, max_rate_hz=30) for i in range(n)]

    def read(i: int) -> None:
        with contextlib.suppress(Exception):
            for _ in streams[i]:
                counts[i] += 1

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    while True:
        command = conn.recv()
        if command == "count":
            conn.send(list(counts))
        else:
            break
    for stream in streams:
        stream.cancel()
    conn.send("bye")


class _Subscribers:
    """Subscribers in separate processes (so they do not share the measuring client's GIL)."""

    PER_PROCESS = 50

    def __init__(self, address: str, run: str, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.procs = []
        self.conns = []
        for k in range(0, n, self.PER_PROCESS):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_subscriber_process,
                args=(address, run, min(self.PER_PROCESS, n - k), child, _CLIENT_CPUS),
                daemon=True,
            )
            proc.start()
            self.procs.append(proc)
            self.conns.append(parent)

    def counts(self) -> list[int]:
        out: list[int] = []
        for conn in self.conns:
            conn.send("count")
            out += conn.recv()
        return out

    def close(self) -> None:
        for conn in self.conns:
            conn.send("stop")
            conn.recv()
        for proc in self.procs:
            proc.join(10)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_SERVICE_PID = [0]
_LAST_CPU = [0.0]


def _rate(client: Client, run: str, window: float) -> float:
    """Training steps/s over `window`; the service process's CPU share goes to _LAST_CPU."""
    r0 = client.get_run(run)
    c0 = _cpu_seconds(_SERVICE_PID[0])
    t0 = time.monotonic()
    time.sleep(window)
    r1 = client.get_run(run)
    elapsed = time.monotonic() - t0
    _LAST_CPU[0] = (_cpu_seconds(_SERVICE_PID[0]) - c0) / elapsed
    return (r1.step - r0.step) / elapsed


def _latencies(fn: object, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.005)
    return out


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--subscribers", default="10,100")
    cpus = os.cpu_count() or 1
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="service on CPU 0, subscribers and the measuring client on the others",
    )
    args = parser.parse_args()
    if args.pin and cpus < 2:
        parser.error("--pin needs at least 2 CPUs")
    if args.pin:
        _CLIENT_CPUS.update(range(1, cpus))
        _pin_clients()
    levels = [int(x) for x in args.subscribers.split(",") if x]

    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        address = f"127.0.0.1:{port}"
        log = Path(tmp) / "service.log"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from trainsvc import main; main()",
                "serve",
                "--listen",
                address,
                "--data-dir",
                str(Path(tmp) / "data"),
                "--metrics-listen",
                "",
                "--log-format",
                "json",
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Before exec, so every thread and worker process of the service inherits it.
            preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if args.pin else None,
        )
        _SERVICE_PID[0] = proc.pid
        try:
            client = connect(address)
            for _ in range(300):
                try:
                    client.list_runs_page(timeout=2)
                    break
                except Exception:
                    time.sleep(0.2)
            run = client.create_run(
                "emergence",
                step_budget=10**9,
                seed=0,
                config={"frame_interval": 1},
                checkpoint_policy=pb.CheckpointPolicy(interval_steps=10**8),
            ).name
            while client.get_run(run).step < 50:
                time.sleep(0.5)

            rows: list[tuple[str, float, str, str, float]] = []
            base_before = _rate(client, run, args.window)
            cpu_before = _LAST_CPU[0]
            results: dict[int, tuple[float, float, float]] = {}
            lat_get: list[float] = []
            lat_list: list[float] = []
            for n in levels:
                subs = _Subscribers(address, run, n)
                time.sleep(5.0)  # the subscriber processes start and connect
                start = subs.counts()
                t0 = time.monotonic()
                rate = _rate(client, run, args.window)
                end = subs.counts()
                elapsed = time.monotonic() - t0
                per_sub = statistics.mean(e - b for e, b in zip(end, start, strict=True)) / elapsed
                results[n] = (rate, per_sub, _LAST_CPU[0])
                if n == max(levels):
                    lat_get = _latencies(lambda: client.get_run(run), 300)
                    lat_list = _latencies(lambda: client.list_runs_page(page_size=10), 300)
                subs.close()
            base_after = _rate(client, run, args.window)
            base = (base_before + base_after) / 2
            base_cpu = (cpu_before + _LAST_CPU[0]) / 2
            rows.append(("0 (baseline, mean of before/after)", base, "1.00", "-", base_cpu))
            for n, (rate, per_sub, cpu) in results.items():
                rows.append((f"{n}", rate, f"{rate / base:.2f}", f"{per_sub:.1f}", cpu))
            client.stop_run(run)
            client.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    print(
        f"trainsvc service benchmark (window {args.window:g} s, emergence default config, "
        f"a frame every step, subscribers ask for 30 frames/s; {cpus} CPUs; "
        + (
            "service + worker pinned to CPU 0, clients on the others)"
            if args.pin
            else "all processes share every CPU)"
        )
    )
    print()
    print(
        f"| {'frame subscribers':<36} | {'train steps/s':>13} | {'ratio to 0':>10} | {'frames/s per subscriber':>23} | {'service CPU (1 core)':>20} |"
    )
    print(f"|{'-' * 38}|{'-' * 14}:|{'-' * 11}:|{'-' * 24}:|{'-' * 21}:|")
    for name, rate, ratio, per_sub, cpu in rows:
        print(f"| {name:<36} | {rate:>13.1f} | {ratio:>10} | {per_sub:>23} | {cpu * 100:>19.0f}% |")
    print(
        f"  (baseline before {base_before:.1f} steps/s, after {base_after:.1f}; target ratio >= 0.95 at 100)"
    )
    print()
    print(
        f"| {'control RPC while ' + str(max(levels)) + ' subscribers stream':<44} | {'p50 ms':>7} | {'p99 ms':>7} |"
    )
    print(f"|{'-' * 46}|{'-' * 8}:|{'-' * 8}:|")
    for name, lat in (("GetRun", lat_get), ("ListRuns (page_size=10)", lat_list)):
        print(f"| {name:<44} | {_pct(lat, 0.5):>7.2f} | {_pct(lat, 0.99):>7.2f} |")
    print("  (target p99 <= 10 ms on loopback)")


if __name__ == "__main__":
    main()
