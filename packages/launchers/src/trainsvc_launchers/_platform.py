"""What the machine has: accelerators, memory, disk, thermal state.

Each probe runs the OS's own tool (``nvidia-smi``, ``system_profiler``,
``pmset``) as a subprocess and returns ``None`` when the tool is missing or
fails, so that a machine without a GPU is reported as such, never a crash.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "AppleChip",
    "NvidiaGpu",
    "apple_chip",
    "available_ram_bytes",
    "jax_devices",
    "nvidia_gpus",
    "thermal_speed_limit",
]

_TIMEOUT_S = 30


def _run(cmd: list[str], timeout: float = _TIMEOUT_S) -> str | None:
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, *cmd[1:]],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


@dataclass(frozen=True)
class NvidiaGpu:
    """One NVIDIA GPU as ``nvidia-smi`` reports it."""

    name: str
    memory_mib: int
    driver: str
    cuda: str | None


def nvidia_gpus() -> list[NvidiaGpu] | None:
    """The NVIDIA GPUs here; ``None`` when ``nvidia-smi`` is missing or fails."""
    out = _run(
        [
            "nvidia-smi",
            "--query-gpu=name,memory.total,driver_version",
            "--format=csv,noheader,nounits",
        ]
    )
    if out is None:
        return None
    header = _run(["nvidia-smi"]) or ""
    match = re.search(r"CUDA Version:\s*([0-9.]+)", header)
    cuda = match.group(1) if match else None
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            mem = int(parts[1]) if parts[1].isdigit() else 0
            gpus.append(NvidiaGpu(name=parts[0], memory_mib=mem, driver=parts[2], cuda=cuda))
    return gpus


@dataclass(frozen=True)
class JaxDevices:
    """JAX's view of the devices: its default backend and device kinds."""

    backend: str
    devices: list[str] = field(default_factory=list)


def jax_devices(python: str = sys.executable) -> JaxDevices | None:
    """Ask JAX (in a child process, so a broken CUDA install cannot crash us) for its devices.

    Returns ``None`` when JAX is not installed or fails to start.
    """
    code = (
        "import json, jax; "
        "print(json.dumps({'backend': jax.default_backend(), "
        "'devices': [d.device_kind for d in jax.devices()]}))"
    )
    out = _run([python, "-c", code], timeout=120)
    if out is None:
        return None
    try:
        raw = json.loads(out.strip().splitlines()[-1])
        return JaxDevices(backend=str(raw["backend"]), devices=[str(d) for d in raw["devices"]])
    except (ValueError, KeyError, IndexError):
        return None


@dataclass(frozen=True)
class AppleChip:
    """An Apple Silicon Mac as ``system_profiler`` reports it."""

    chip: str
    memory: str


def apple_chip() -> AppleChip | None:
    """The Apple Silicon chip and unified memory; ``None`` off macOS/arm64."""
    if platform.system() != "Darwin" or platform.machine() != "arm64":
        return None
    out = _run(["system_profiler", "SPHardwareDataType", "-json"])
    if out is None:
        return None
    try:
        hw = json.loads(out)["SPHardwareDataType"][0]
    except (ValueError, KeyError, IndexError):
        return None
    return AppleChip(
        chip=str(hw.get("chip_type", "Apple Silicon")), memory=str(hw.get("physical_memory", "?"))
    )


def thermal_speed_limit() -> int | None:
    """macOS's CPU speed limit in percent (100 = not throttled); ``None`` where not reported."""
    if platform.system() != "Darwin":
        return None
    out = _run(["pmset", "-g", "therm"])
    if out is None:
        return None
    match = re.search(r"CPU_Speed_Limit\s*=\s*(\d+)", out)
    return int(match.group(1)) if match else None


def available_ram_bytes() -> int | None:
    """Memory available to new processes (MemAvailable on Linux, physical size elsewhere)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
