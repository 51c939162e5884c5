"""CPU affinity: keep run workers and the service's own threads on separate CPUs.

Training saturates whatever CPUs it is given. When the service's threads (frame
fan-out to many subscribers, control RPCs) share those CPUs, every frame sent is
CPU time taken from training and every RPC waits behind a trainer's time slice.
``trainsvc serve --worker-cpus`` pins run workers to a set of CPUs and the service
to the rest, so neither slows the other. Linux only (``os.sched_setaffinity``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = [
    "affinity_supported",
    "available_cpus",
    "format_cpu_list",
    "parse_cpu_list",
    "pin_process",
    "pin_this_process",
]


def affinity_supported() -> bool:
    """Whether this platform can pin processes to CPUs (Linux: yes; macOS, Windows: no)."""
    return hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


def available_cpus() -> frozenset[int]:
    """The CPUs this process may run on."""
    return frozenset(os.sched_getaffinity(0))


def parse_cpu_list(text: str) -> frozenset[int]:
    """CPUs from a list such as ``"2"``, ``"0-3"`` or ``"0-3,6,8-9"`` (the syntax of taskset -c).

    Raises ``ValueError`` saying what is wrong and what is allowed.
    """
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"expected CPU numbers and ranges such as 0-3,6; got {text!r}")
        low, high = int(first), int(last) if dash else int(first)
        if low > high:
            raise ValueError(f"range {part.strip()!r} ends before it starts")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: frozenset[int] | set[int]) -> str:
    """The inverse of :func:`parse_cpu_list`, ranges collapsed (``{0, 1, 2, 5}`` -> ``"0-2,5"``)."""
    parts: list[str] = []
    for cpu in sorted(cpus):
        if parts and cpu == int(parts[-1].rpartition("-")[2]) + 1:
            parts[-1] = f"{parts[-1].partition('-')[0]}-{cpu}"
        else:
            parts.append(str(cpu))
    return ",".join(parts)


def pin_process(cpus: frozenset[int]) -> None:
    """Pin the calling thread, and so every thread and process it starts later, to ``cpus``."""
    os.sched_setaffinity(0, cpus)


def pin_this_process(cpus: frozenset[int]) -> None:
    """Pin every thread this process already has (and those they start later) to ``cpus``.

    ``sched_setaffinity`` acts on one thread; the service pins itself after its
    logging and gRPC threads may have started, so each is pinned by its thread id.
    """
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)
