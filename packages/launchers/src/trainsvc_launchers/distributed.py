"""Start a data-parallel ``trainsvc-train`` run on a fixed list of hosts.

``trainsvc-launch distributed --hosts h1,h2 [options] -- TRAIN ARGS``
starts process ``i`` of the run on host ``i`` (the same host may appear several
times): locally when the host is this machine, else over ``ssh``. Process 0's host
is the coordinator (``--coordinator h1:PORT``). Every process gets the same
``TRAIN ARGS`` plus ``--coordinator --num-processes --process-id``; its output
comes back line by line, prefixed ``[p<i>]``.

When a process fails, the launcher stops the others (the run cannot continue
without it) and, with ``--restarts K``, starts all of them again, up to K times,
with ``--train.resume-from latest``: training continues from the newest
checkpoint. The checkpoint directory must be one every host sees (shared storage)
or at least process 0's: process 0 writes every checkpoint, and on resume every
process reads the newest one.

Exit codes: 0 every process finished, 1 bad input or a failed run (after its
restarts), 2 the restarts ran out while the run kept failing.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

__all__ = ["DistributedLaunch", "LaunchError", "build_parser", "main"]

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)$")
_LOCAL = {"localhost", "127.0.0.1", "::1", "[::1]"}


class LaunchError(ValueError):
    """Bad launcher input; ``field`` names the flag."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class DistributedLaunch:
    """One data-parallel run: which host runs which process, and the trainer's arguments.

    Attributes:
        hosts: process ``i`` runs on ``hosts[i]``; ``hosts[0]`` is the coordinator.
        port: the coordinator's port on ``hosts[0]``.
        train_args: the arguments every ``trainsvc-train`` gets.
        train_command: the trainer command (``trainsvc-train``, or
            ``python -m trainsvc_trainer._cli``), as an argument list.
        ssh: the command that runs a command on a remote host (``ssh``).
        workdir: the directory the remote processes start in (default: the login's).
    """

    hosts: tuple[str, ...]
    port: int
    train_args: tuple[str, ...]
    train_command: tuple[str, ...] = ("trainsvc-train",)
    ssh: tuple[str, ...] = ("ssh",)
    workdir: str | None = None

    def __post_init__(self) -> None:
        if not self.hosts:
            raise LaunchError("--hosts", "give at least one host, e.g. --hosts h1,h2")
        for host in self.hosts:
            if not _HOST.match(host):
                raise LaunchError("--hosts", f"not a host name or address: {host!r}")
        if self.hosts[0] in _LOCAL and not all(is_local(h) for h in self.hosts):
            raise LaunchError(
                "--hosts",
                f"the other hosts must reach process 0 at {self.hosts[0]!r}: "
                "give its name or address, not a loopback one",
            )
        if not 1 <= self.port <= 65535:
            raise LaunchError("--port", f"must be in [1, 65535], got {self.port}")
        for flag in ("--coordinator", "--num-processes", "--process-id"):
            if flag in self.train_args:
                raise LaunchError("train args", f"{flag} is set by the launcher; remove it")

    @property
    def coordinator(self) -> str:
        """``HOST:PORT`` of process 0."""
        return f"{self.hosts[0]}:{self.port}"

    def process_args(self, index: int, *, resume: bool = False) -> list[str]:
        """The trainer's command line of process ``index`` (with ``--train.resume-from latest``)."""
        args = [*self.train_command, *self.train_args]
        if resume and not any(a.startswith("--train.resume") for a in self.train_args):
            args += ["--train.resume-from", "latest"]
        args += ["--coordinator", self.coordinator, "--num-processes", str(len(self.hosts))]
        return [*args, "--process-id", str(index)]

    def command(self, index: int, *, resume: bool = False) -> list[str]:
        """What runs process ``index``: its trainer command, wrapped in ``ssh`` for a remote host."""
        args = self.process_args(index, resume=resume)
        host = self.hosts[index]
        if is_local(host):
            return args
        remote = shlex.join(args)
        if self.workdir:
            remote = f"cd {shlex.quote(self.workdir)} && exec {remote}"
        return [*self.ssh, host.strip("[]"), remote]


def is_local(host: str) -> bool:
    """Whether ``host`` names this machine (loopback or its host name)."""
    return host in _LOCAL or host in (socket.gethostname(), socket.getfqdn())


def _pump(stream: TextIO, prefix: str, out: TextIO, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(f"{prefix}{line}")
            out.flush()


def run_once(launch: DistributedLaunch, *, resume: bool, out: TextIO, poll_s: float = 0.1) -> int:
    """Starts every process, relays their output, and returns 0 or the first failure's code.

    When one process fails, the others are terminated (then killed after 10 s).
    """
    lock = threading.Lock()
    procs: list[subprocess.Popen[str]] = []
    pumps: list[threading.Thread] = []
    for i in range(len(launch.hosts)):
        proc = subprocess.Popen(
            launch.command(i, resume=resume),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        pump = threading.Thread(target=_pump, args=(proc.stdout, f"[p{i}] ", out, lock))
        pump.daemon = True
        pump.start()
        pumps.append(pump)
    failure = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if failed:
                failure = failed[0]
                break
            time.sleep(poll_s)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for pump in pumps:
            pump.join(5)
        for p in procs:
            if p.stdout is not None:
                p.stdout.close()
    if failure:
        return failure
    return next((p.returncode for p in procs if p.returncode), 0)


def launch_run(
    launch: DistributedLaunch, *, restarts: int = 0, out: TextIO = sys.stdout, resume: bool = False
) -> int:
    """Runs ``launch``; after a failure starts every process again (resuming), ``restarts`` times.

    Returns 0 when a launch finished, else 1 (no restarts asked) or 2 (restarts used up).
    """
    for attempt in range(restarts + 1):
        code = run_once(launch, resume=resume or attempt > 0, out=out)
        if code == 0:
            return 0
        print(
            f"[launcher] attempt {attempt + 1} of {restarts + 1} failed (exit code {code})",
            file=out,
            flush=True,
        )
    return 2 if restarts else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``trainsvc-launch distributed``."""
    parser = argparse.ArgumentParser(
        prog="trainsvc-launch distributed",
        description="Start a data-parallel trainsvc-train run: process i on host i "
        "(locally for this machine, else over ssh). Put the trainer's arguments after --.",
    )
    parser.add_argument("--hosts", required=True, help="comma-separated, process 0's first")
    parser.add_argument("--port", type=int, default=8476, help="coordinator port on hosts[0]")
    parser.add_argument(
        "--restarts", type=int, default=0, help="after a failure, relaunch all (resuming) K times"
    )
    parser.add_argument("--resume", action="store_true", help="add --train.resume-from latest")
    parser.add_argument("--ssh", default="ssh", help="remote command runner (default ssh)")
    parser.add_argument("--workdir", help="directory the remote processes start in")
    parser.add_argument(
        "--train-command",
        default="trainsvc-train",
        help="the trainer command on every host (default trainsvc-train)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print each process's command (JSON) and exit"
    )
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then trainer arguments")
    return parser


def parse(argv: Sequence[str] | None = None) -> tuple[DistributedLaunch, argparse.Namespace]:
    """The launch the arguments describe (LaunchError names a bad flag)."""
    args = build_parser().parse_args(argv)
    train_args = list(args.train_args)
    if train_args[:1] == ["--"]:
        train_args = train_args[1:]
    if args.restarts < 0:
        raise LaunchError("--restarts", f"must be >= 0, got {args.restarts}")
    hosts = tuple(h.strip() for h in args.hosts.split(",") if h.strip())
    launch = DistributedLaunch(
        hosts,
        args.port,
        tuple(train_args),
        tuple(shlex.split(args.train_command)),
        tuple(shlex.split(args.ssh)),
        args.workdir,
    )
    return launch, args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    try:
        launch, args = parse(argv)
    except LaunchError as exc:
        print(f"trainsvc-launch distributed: error: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        for i in range(len(launch.hosts)):
            record = {"process": i, "host": launch.hosts[i], "command": launch.command(i)}
            print(json.dumps(record))
        return 0
    return launch_run(launch, restarts=args.restarts, resume=args.resume)


if __name__ == "__main__":
    sys.exit(main())
