"""Preflight: can this machine run this config on this target? One line per check."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from trainsvc_launchers import _platform
from trainsvc_launchers._config import ConfigError, LaunchConfig, load_launch_config
from trainsvc_launchers._credentials import find_kaggle_credentials
from trainsvc_launchers._output import Level, Reporter

__all__ = ["TARGETS", "Check", "run_preflight"]

TARGETS = ("h100", "m4", "local", "kaggle")
MIN_PYTHON = (3, 11)
_GIB = 2**30


@dataclass(frozen=True)
class Check:
    """The outcome of one preflight check."""

    name: str
    level: Level
    message: str

    @property
    def failed(self) -> bool:
        """Whether this check fails the preflight."""
        return self.level is Level.ERROR


def _python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] >= MIN_PYTHON:
        return Check("python", Level.SUCCESS, f"Python {version}")
    need = ".".join(map(str, MIN_PYTHON))
    return Check("python", Level.ERROR, f"Python {version} is too old: need >= {need}")


def _nvidia(required: bool) -> Check:
    gpus = _platform.nvidia_gpus()
    if not gpus:
        level = Level.ERROR if required else Level.WARNING
        return Check(
            "accelerator",
            level,
            "no NVIDIA GPU found (nvidia-smi missing or reports none); training would run on CPU",
        )
    desc = ", ".join(f"{g.name} ({g.memory_mib // 1024} GiB)" for g in gpus)
    cuda = gpus[0].cuda or "unknown"
    jax = _platform.jax_devices()
    if jax is None:
        return Check(
            "accelerator",
            Level.WARNING,
            f"{desc}, CUDA {cuda}, driver {gpus[0].driver}; JAX not importable here",
        )
    if jax.backend != "gpu":
        return Check(
            "accelerator",
            Level.ERROR if required else Level.WARNING,
            f"{desc}, CUDA {cuda}, but JAX uses {jax.backend!r}: install jax[cuda12]",
        )
    return Check(
        "accelerator", Level.SUCCESS, f"{desc}, CUDA {cuda}, JAX devices: {', '.join(jax.devices)}"
    )


def _apple() -> Check:
    chip = _platform.apple_chip()
    if chip is None:
        return Check(
            "accelerator", Level.ERROR, f"not an Apple Silicon Mac ({sys.platform}/{_machine()})"
        )
    check = Check("accelerator", Level.SUCCESS, f"{chip.chip}, {chip.memory} unified memory")
    return check


def _machine() -> str:
    import platform

    return platform.machine() or "unknown"


def _accelerator(target: str) -> Check:
    if target == "h100":
        return _nvidia(required=True)
    if target == "m4":
        return _apple()
    if target == "local":
        if _platform.nvidia_gpus():
            return _nvidia(required=False)
        if _platform.apple_chip() is not None:
            return _apple()
        return Check(
            "accelerator",
            Level.WARNING,
            "no accelerator (no NVIDIA GPU, not Apple Silicon): training runs on CPU",
        )
    return Check(
        "accelerator",
        Level.SUCCESS,
        "Kaggle provides the GPU; the bootstrapper checks it in the session",
    )


def _lm_backend(target: str, cfg: LaunchConfig) -> Check:
    """Which backend a lora run trains on here (MLX on an Apple GPU, else JAX on the CPU)."""
    from trainsvc_launchers._lm import lm_backend

    train = cfg.trainer.get("train")
    setting = train.get("backend", "auto") if isinstance(train, dict) else "auto"
    backend = lm_backend(setting=str(setting))
    if backend.name == "mlx":
        return Check("backend", Level.SUCCESS, backend.detail)
    if backend.name == "none":
        return Check("backend", Level.ERROR, backend.detail)
    return Check("backend", Level.WARNING if target == "m4" else Level.SUCCESS, backend.detail)


def _disk(cfg: LaunchConfig, data_dir: Path) -> Check:
    probe = data_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = cfg.disk_needed_bytes()
    msg = f"{free / _GIB:.1f} GiB free at {probe}, the config needs {need / _GIB:.2f} GiB"
    return Check("disk", Level.SUCCESS if free >= need else Level.ERROR, msg)


def _ram(cfg: LaunchConfig) -> Check:
    avail = _platform.available_ram_bytes()
    if avail is None:
        return Check("ram", Level.WARNING, "available memory is not reported on this OS")
    need = cfg.min_ram_gb * _GIB
    msg = f"{avail / _GIB:.1f} GiB available, the config needs {cfg.min_ram_gb:.1f} GiB"
    return Check("ram", Level.SUCCESS if avail >= need else Level.ERROR, msg)


def _thermal() -> Check | None:
    limit = _platform.thermal_speed_limit()
    if limit is None or limit >= 100:
        return None
    return Check(
        "thermal",
        Level.WARNING,
        f"the CPU is thermally throttled to {limit}% (expect slower steps)",
    )


def _kaggle_checks(env_file: Path | None) -> list[Check]:
    checks = []
    try:
        version = importlib.metadata.version("kaggle")
        level = Level.SUCCESS if version.split(".")[0] == "2" else Level.ERROR
        checks.append(Check("kaggle-client", level, f"kaggle {version} (supported: 2.x)"))
    except importlib.metadata.PackageNotFoundError:
        checks.append(Check("kaggle-client", Level.ERROR, "the kaggle package is not installed"))
    creds = find_kaggle_credentials(env_file)
    if creds is None:
        checks.append(
            Check(
                "credentials",
                Level.ERROR,
                "no Kaggle credentials: set KAGGLE_API_TOKEN or KAGGLE_USERNAME/KAGGLE_KEY (environment or .env)",
            )
        )
    else:
        checks.append(
            Check("credentials", Level.SUCCESS, f"Kaggle credentials from {creds.source}")
        )
    return checks


def _raw_kaggle(path: Path, cfg: LaunchConfig) -> dict[str, object]:
    """The config's ``[kaggle]`` table, also when other parts of the config are bad."""
    if cfg.kaggle:
        return cfg.kaggle
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError):
        return {}
    section = raw.get("kaggle") if isinstance(raw, dict) else None
    return section if isinstance(section, dict) else {}


def _kaggle_section(section: dict[str, object], env_file: Path | None) -> list[Check]:
    """The ``[kaggle]`` section, validated as ``submit`` will: one check per bad field."""
    from trainsvc_launchers._kaggle_kernel import KaggleSpec

    if not section:
        return [Check("kaggle", Level.ERROR, "the config has no [kaggle] section (slug, ...)")]
    creds = find_kaggle_credentials(env_file)
    # submit learns the user name from Kaggle; here only the local sources are asked
    owner = os.environ.get("KAGGLE_USERNAME") or (
        creds.values.get("KAGGLE_USERNAME") if creds is not None else None
    )
    try:
        spec = KaggleSpec.from_dict(section, owner=owner or "(your Kaggle user name)")
    except ConfigError as exc:
        return [Check("kaggle", Level.ERROR, str(err)) for err in exc.errors]
    return [Check("kaggle", Level.SUCCESS, f"[kaggle] is valid (kernels {spec.slug}-s1, -s2, ...)")]


def run_preflight(
    target: str,
    config_path: Path | None,
    reporter: Reporter,
    data_dir: Path = Path(".trainsvc"),
    env_file: Path | None = None,
) -> bool:
    """Run every check for ``target``, report one line each, and return overall pass/fail.

    Args:
        target: one of :data:`TARGETS`.
        config_path: the launch config to validate; the defaults when ``None``.
        reporter: where the lines go.
        data_dir: where checkpoints will be written (for the disk check).
        env_file: a ``.env`` file to look for Kaggle credentials in.
    """
    section = f"PREFLIGHT-{target.upper()}"
    checks: list[Check] = [_python(), _accelerator(target)]
    cfg = LaunchConfig()
    if config_path is not None:
        try:
            cfg = load_launch_config(config_path)
            checks.append(
                Check(
                    "config",
                    Level.SUCCESS,
                    f"{config_path} is valid ({cfg.kind}, {cfg.step_budget} steps)",
                )
            )
        except ConfigError as exc:
            checks.extend(Check("config", Level.ERROR, str(err)) for err in exc.errors)
    if target != "kaggle":
        checks += [_disk(cfg, data_dir), _ram(cfg)]
    if cfg.kind == "lora" and (
        target == "m4" or (target == "local" and _platform.apple_chip() is not None)
    ):
        checks.append(_lm_backend(target, cfg))
    if target == "m4" and (thermal := _thermal()) is not None:
        checks.append(thermal)
    if target == "kaggle":
        checks += _kaggle_checks(env_file)
        if config_path is not None:
            checks += _kaggle_section(_raw_kaggle(config_path, cfg), env_file)
        if cfg.kind == "lora":
            checks.append(
                Check(
                    "config",
                    Level.ERROR,
                    "kind lora is launched on a GPU box, a Mac or locally (h100, m4, local): "
                    "its model and data are files on this machine, not in a Kaggle session",
                )
            )
    for check in checks:
        reporter.emit(check.level, section, f"{check.name}: {check.message}", check=check.name)
    passed = not any(c.failed for c in checks)
    if passed:
        reporter.success(section, "preflight passed", check="overall", passed=True)
    else:
        failed = sorted({c.name for c in checks if c.failed})
        reporter.error(
            section, f"preflight failed: {', '.join(failed)}", check="overall", passed=False
        )
    return passed
