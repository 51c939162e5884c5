"""Benchmark of the trainsvc service: training throughput under frame fan-out, and control latency.

Starts a real `trainsvc serve` on loopback with one emergence run (the
trainer's default config, a frame every step), then measures over fixed
windows, in rounds (each round: no subscribers, then each level; the streams
are opened for the level and closed after it, the subscriber processes stay):

- training steps/s with 0, 10 and 100 StreamFrames subscribers (each asking
  for 30 frames/s, as the dashboard does), as a ratio to the same round's
  0-subscriber rate (a shared machine's load drifts between rounds); the
  median over rounds, with its range; target >= 0.95 at 100;
- frames delivered per subscriber per second;
- the service process's CPU, and its extra CPU per frame sent (CPU time over
  the 0-subscriber window of the same round, divided by the frames the
  subscribers received): the cost of fan-out, steadier under load than rates;
- the subscriber processes' CPU (they share the machine's CPUs with the
  trainer unless --pin: on a small machine much of the training slowdown at
  100 subscribers is the clients' own decoding, not the service);
- GetRun and ListRuns latency p50/p99 while 100 subscribers stream, over all
  rounds (target p99 <= 10 ms on loopback), and with no subscribers (what the
  machine's load alone gives); the p99 of each round too, for its spread;
- GetRun latency from 50 concurrent control clients (``--control-clients``; each
  its own channel, 10 calls a second at a random phase (``--control-rate``; 0:
  back to back, which measures throughput, not latency), 10 per process) while 20 subscribers
  stream (``--control-streams``) and the run trains: p50/p99 per round, their
  median and range (target p99 <= 20 ms).

With --pin the service runs with `--worker-cpus 1-N` (its run worker on CPUs 1
and up, the service's own threads on CPU 0), and the subscribers and the
measuring client are pinned to CPU 0 beside the service: they stand in for
clients on other machines, and the ratio shows whether fan-out takes anything
from training once the service keeps off the trainer's CPUs (the deployment
docs/service.md recommends). By default every process shares every CPU.

Usage: python bench/service.py [--window 5] [--rounds 3] [--subscribers 10,100]
[--control-clients 50] [--control-streams 20] [--pin | --no-pin]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
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
from typing import Any

from trainsvc._cpus import format_cpu_list
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
    address: str, conn: Connection, cpus: set[int] | None = None, nice: int = 0
) -> None:
    """Open and close StreamFrames subscribers (threads) on command; report their frame counts."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    if nice:
        os.nice(nice)
    clients: list[Client] = []
    streams: list[Any] = []
    counts: list[int] = []

    def read(i: int, stream: Any) -> None:
        with contextlib.suppress(Exception):
            for _ in stream:
                counts[i] += 1

    while True:
        command, *args = conn.recv()
        if command == "open":
            run, n = args
            while len(clients) < max(1, n // 10):  # ten streams share a connection
                clients.append(connect(address))
            counts = [0] * n
            streams = [
                clients[i % len(clients)].stream_frames(run, max_rate_hz=30) for i in range(n)
            ]
            for i, stream in enumerate(streams):
                threading.Thread(target=read, args=(i, stream), daemon=True).start()
            conn.send("ok")
        elif command == "count":
            conn.send(sum(counts))
        elif command == "close":
            for stream in streams:
                stream.cancel()
            streams = []
            conn.send("ok")
        else:
            break
    conn.send("bye")


def _control_process(
    address: str, run: str, threads: int, seconds: float, rate_hz: float, conn: Connection
) -> None:
    """``threads`` clients (one channel each) call GetRun ``rate_hz`` times a second each
    (0: back to back) for ``seconds``, at random phases; sends every call's latency in ms."""
    _pin_clients()
    clients = [connect(address) for _ in range(threads)]
    for client in clients:
        client.get_run(run)  # connected before the clock starts
    latencies: list[list[float]] = [[] for _ in clients]
    conn.send("ready")
    conn.recv()  # go
    end = time.monotonic() + seconds

    def call(i: int) -> None:
        period = 1.0 / rate_hz if rate_hz > 0 else 0.0
        due = time.monotonic() + random.random() * period
        while due < end:
            time.sleep(max(0.0, due - time.monotonic()))
            t0 = time.perf_counter()
            clients[i].get_run(run)
            latencies[i].append((time.perf_counter() - t0) * 1000)
            due = max(due + period, time.monotonic()) if period else time.monotonic()

    workers = [threading.Thread(target=call, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    conn.send([x for lat in latencies for x in lat])
    for client in clients:
        client.close()


def _control_round(
    address: str, run: str, clients: int, seconds: float, rate_hz: float
) -> tuple[list[float], float, float]:
    """GetRun latencies (ms) of ``clients`` concurrent clients over ``seconds``, and the
    CPU seconds the service and the client processes spent meanwhile."""
    ctx = multiprocessing.get_context("spawn")
    per = 10
    procs, conns = [], []
    for k in range(0, clients, per):
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_control_process,
            args=(address, run, min(per, clients - k), seconds, rate_hz, child),
            daemon=True,
        )
        proc.start()
        procs.append(proc)
        conns.append(parent)
    for conn in conns:
        conn.recv()  # every client connected
    service0 = _cpu_seconds(_SERVICE_PID[0])
    clients0 = sum(_cpu_seconds(p.pid) for p in procs if p.pid)
    for conn in conns:
        conn.send("go")
    out: list[float] = []
    for conn in conns:
        out += conn.recv()
    service_cpu = _cpu_seconds(_SERVICE_PID[0]) - service0
    clients_cpu = sum(_cpu_seconds(p.pid) for p in procs if p.pid) - clients0
    for proc in procs:
        proc.join(30)
    return out, service_cpu, clients_cpu


class _Subscribers:
    """Subscriber processes (so they do not share the measuring client's GIL), started once;
    streams are opened and closed per measurement."""

    PER_PROCESS = 50

    def __init__(self, address: str, most: int, nice: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.procs = []
        self.conns: list[Connection] = []
        for _ in range(0, most, self.PER_PROCESS):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_subscriber_process, args=(address, child, _CLIENT_CPUS, nice), daemon=True
            )
            proc.start()
            self.procs.append(proc)
            self.conns.append(parent)
        self.active: list[Connection] = []

    def open(self, run: str, n: int) -> None:
        self.active = []
        for k, conn in zip(range(0, n, self.PER_PROCESS), self.conns, strict=False):
            conn.send(("open", run, min(self.PER_PROCESS, n - k)))
            self.active.append(conn)
        for conn in self.active:
            conn.recv()

    def frames(self) -> int:
        total = 0
        for conn in self.active:
            conn.send(("count",))
            total += conn.recv()
        return total

    def close_streams(self) -> None:
        for conn in self.active:
            conn.send(("close",))
            conn.recv()
        self.active = []

    def close(self) -> None:
        for conn in self.conns:
            conn.send(("stop",))
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
    parser.add_argument("--window", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every level")
    parser.add_argument(
        "--settle", type=float, default=1.5, help="seconds between opening streams and measuring"
    )
    parser.add_argument(
        "--calls",
        type=int,
        default=100,
        help="GetRun and ListRuns calls per round at the top level",
    )
    parser.add_argument("--subscribers", default="10,100")
    parser.add_argument(
        "--control-clients", type=int, default=50, help="concurrent GetRun clients (0: skip)"
    )
    parser.add_argument(
        "--control-streams", type=int, default=20, help="subscribers open meanwhile"
    )
    parser.add_argument(
        "--control-rate",
        type=float,
        default=10.0,
        help="GetRun calls per second per control client (0: back to back, a throughput test)",
    )
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=None,
        help="pass --worker-nice to trainsvc serve (default: the service's default)",
    )
    parser.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="niceness of the subscriber processes: on a real deployment the viewers run on "
        "other machines; a high value keeps their decoding from taking the trainer's CPU here",
    )
    cpus = os.cpu_count() or 1
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="serve --worker-cpus 1-N: the service, subscribers and measuring client on CPU 0",
    )
    args = parser.parse_args()
    if args.pin and cpus < 2:
        parser.error("--pin needs at least 2 CPUs")
    if args.pin:
        _CLIENT_CPUS.add(0)  # the measuring client pins itself once the service has started
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
                *(["--worker-nice", str(args.worker_nice)] if args.worker_nice is not None else []),
                *(["--worker-cpus", format_cpu_list(set(range(1, cpus)))] if args.pin else []),
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _SERVICE_PID[0] = proc.pid
        _pin_clients()
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

            subs = _Subscribers(address, max(levels), args.client_nice)
            rates: dict[int, list[float]] = {n: [] for n in [0, *levels]}
            ratios: dict[int, list[float]] = {n: [] for n in levels}
            per_sub: dict[int, list[float]] = {n: [] for n in levels}
            cpu: dict[int, list[float]] = {n: [] for n in [0, *levels]}
            cpu_per_frame: dict[int, list[float]] = {n: [] for n in levels}
            sub_cpu: dict[int, list[float]] = {n: [] for n in [0, *levels]}
            lat_get: dict[int, list[float]] = {0: [], max(levels): []}
            lat_list: dict[int, list[float]] = {0: [], max(levels): []}
            p99_rounds: list[tuple[float, float]] = []  # GetRun, ListRuns at the top level
            # p50, p99, calls, service and clients CPU per call (us), per round
            control: list[tuple[float, float, int, float, float]] = []
            for _ in range(args.rounds):
                # One round: no subscribers, then each level; the machine's load drifts,
                # so each level is compared with the same round's no-subscriber rate.
                for n in [0, *levels]:
                    if n:
                        subs.open(run, n)
                        time.sleep(args.settle)  # the streams connect and get going
                    f0 = subs.frames()
                    s0 = sum(_cpu_seconds(p.pid) for p in subs.procs if p.pid)
                    t0 = time.monotonic()
                    rate = _rate(client, run, args.window)
                    sent = subs.frames() - f0
                    elapsed = time.monotonic() - t0
                    s1 = sum(_cpu_seconds(p.pid) for p in subs.procs if p.pid)
                    sub_cpu[n].append((s1 - s0) / elapsed)
                    rates[n].append(rate)
                    cpu[n].append(_LAST_CPU[0])
                    if n:
                        ratios[n].append(rate / rates[0][-1])
                        per_sub[n].append(sent / n / elapsed)
                        extra_cpu = (_LAST_CPU[0] - cpu[0][-1]) * elapsed
                        cpu_per_frame[n].append(extra_cpu / max(sent, 1) * 1e6)
                    if n in lat_get:  # with no subscribers (the machine's share) and the most
                        got = _latencies(lambda: client.get_run(run), args.calls)
                        listed = _latencies(lambda: client.list_runs_page(page_size=10), args.calls)
                        lat_get[n] += got
                        lat_list[n] += listed
                        if n:
                            p99_rounds.append((_pct(got, 0.99), _pct(listed, 0.99)))
                    if n:
                        subs.close_streams()
                if args.control_clients:
                    subs.open(run, args.control_streams)
                    time.sleep(args.settle)
                    control_lat, service_cpu, clients_cpu = _control_round(
                        address, run, args.control_clients, args.window, args.control_rate
                    )
                    calls = max(len(control_lat), 1)
                    control.append(
                        (
                            _pct(control_lat, 0.5),
                            _pct(control_lat, 0.99),
                            len(control_lat),
                            service_cpu / calls * 1e6,
                            clients_cpu / calls * 1e6,
                        )
                    )
                    subs.close_streams()
            subs.close()
            med = statistics.median
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
            f"serve --worker-cpus {format_cpu_list(set(range(1, cpus)))}: the worker on CPU "
            f"{format_cpu_list(set(range(1, cpus)))}, the service and clients on CPU 0"
            if args.pin
            else "all processes share every CPU"
        )
        + f"; service --worker-nice {'default' if args.worker_nice is None else args.worker_nice}"
        + f", subscriber processes nice {args.client_nice})"
    )
    print()
    print(
        f"| {'frame subscribers':<17} | {'train steps/s':>13} | {'ratio to 0 (median, min-max)':>28} "
        f"| {'frames/s per subscriber':>23} | {'service CPU (1 core)':>20} "
        f"| {'service CPU per frame sent':>26} | {'subscribers CPU':>15} |"
    )
    print(f"|{'-' * 19}|{'-' * 14}:|{'-' * 29}:|{'-' * 24}:|{'-' * 21}:|{'-' * 27}:|{'-' * 16}:|")
    print(
        f"| {'0':<17} | {med(rates[0]):>13.1f} | {'1.00':>28} | {'-':>23} "
        f"| {med(cpu[0]) * 100:>19.0f}% | {'-':>26} | {med(sub_cpu[0]) * 100:>14.0f}% |"
    )
    for n in levels:
        r = ratios[n]
        ratio = f"{med(r):.2f} ({min(r):.2f}-{max(r):.2f})"
        print(
            f"| {n:<17} | {med(rates[n]):>13.1f} | {ratio:>28} | {med(per_sub[n]):>23.1f} "
            f"| {med(cpu[n]) * 100:>19.0f}% | {med(cpu_per_frame[n]):>23.0f} us "
            f"| {med(sub_cpu[n]) * 100:>14.0f}% |"
        )
    print(
        f"  (medians of {args.rounds} rounds; each level's ratio is to the same round's "
        "0-subscriber rate; target ratio >= 0.95 at 100)"
    )
    print()
    top = max(levels)
    print(
        f"| {'control RPC':<24} | {'p50 ms, 0 subscribers':>21} | {'p99 ms, 0 subscribers':>21} "
        f"| {f'p50 ms, {top} subscribers':>23} | {f'p99 ms, {top} subscribers':>23} |"
    )
    print(f"|{'-' * 26}|{'-' * 22}:|{'-' * 22}:|{'-' * 24}:|{'-' * 24}:|")
    for name, lat in (("GetRun", lat_get), ("ListRuns (page_size=10)", lat_list)):
        print(
            f"| {name:<24} | {_pct(lat[0], 0.5):>21.2f} | {_pct(lat[0], 0.99):>21.2f} "
            f"| {_pct(lat[top], 0.5):>23.2f} | {_pct(lat[top], 0.99):>23.2f} |"
        )
    print(
        "  (target p99 <= 10 ms on loopback while 100 stream; the 0-subscriber columns are "
        "what the machine's load alone gives)"
    )
    get99 = [g for g, _ in p99_rounds]
    list99 = [x for _, x in p99_rounds]
    print(
        f"  p99 per round at {top} subscribers: GetRun "
        + ", ".join(f"{v:.1f}" for v in get99)
        + f" (median {statistics.median(get99):.1f}, {min(get99):.1f}-{max(get99):.1f}); "
        + "ListRuns "
        + ", ".join(f"{v:.1f}" for v in list99)
        + f" (median {statistics.median(list99):.1f}, {min(list99):.1f}-{max(list99):.1f}) ms"
    )
    if control:
        print()
        print(
            f"| {args.control_clients} concurrent GetRun clients at {args.control_rate:g}/s each, "
            f"{args.control_streams} streams open, run training | p50 ms | p99 ms | calls "
            "| service CPU per call | clients' CPU per call |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for k, (p50, p99, calls, service_us, clients_us) in enumerate(control, 1):
            print(
                f"| round {k} | {p50:.2f} | {p99:.2f} | {calls} | {service_us:.0f} us "
                f"| {clients_us:.0f} us |"
            )
        p50s, p99s = [c[0] for c in control], [c[1] for c in control]
        print(
            f"| median (min-max) | {statistics.median(p50s):.2f} ({min(p50s):.2f}-{max(p50s):.2f}) "
            f"| {statistics.median(p99s):.2f} ({min(p99s):.2f}-{max(p99s):.2f}) | |"
        )
        print("  (target p99 <= 20 ms at 50 concurrent control clients)")


if __name__ == "__main__":
    main()
