"""Kaggle kernel folders: ``kernel-metadata.json`` plus the bootstrapper script.

Each Kaggle session of a run is its own kernel, ``<owner>/<slug>-s<N>``; the
kernel of session ``N > 1`` lists session ``N - 1`` in ``kernel_sources`` so
that Kaggle mounts the previous session's output (its checkpoints) under
``/kaggle/input/``, where the bootstrapper finds the newest valid one.
"""

from __future__ import annotations

import json
import pprint
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from trainsvc_launchers._config import ConfigError, FieldError, LaunchConfig
from trainsvc_launchers._files import write_json_atomic, write_text_atomic

__all__ = [
    "BOOTSTRAP_FILE",
    "KaggleSpec",
    "bootstrap_source",
    "build_kernel_folder",
    "kernel_id",
]

BOOTSTRAP_FILE = "trainsvc_bootstrap.py"
METADATA_FILE = "kernel-metadata.json"
MAX_SESSION_HOURS = 12.0
MACHINE_SHAPES = (
    "NvidiaTeslaT4",
    "NvidiaTeslaT4Highmem",
    "NvidiaTeslaP100",
    "NvidiaL4",
    "NvidiaL4X1",
    "Tpu1VmV38",
)
# The service with every trainer kind (its extras), so any `launch.kind` trains.
DEFAULT_PACKAGES = ("trainsvc[all]", "trainsvc-client")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{3,40}[a-z0-9]$")
_REF = re.compile(r"^[A-Za-z0-9_-]+/[A-Za-z0-9_.-]+$")
_EMBED_MARKER = "EMBEDDED_SPEC: dict[str, Any] = {}"


@dataclass
class KaggleSpec:
    """The ``[kaggle]`` section of a launch config."""

    owner: str = ""
    slug: str = ""
    enable_gpu: bool = True
    enable_internet: bool = True
    machine_shape: str | None = "NvidiaTeslaT4"
    dataset_sources: list[str] = field(default_factory=list)
    wheels_dataset: str | None = None
    packages: list[str] = field(default_factory=lambda: list(DEFAULT_PACKAGES))
    session_hours: float = 11.5
    checkpoint_minutes: float = 30.0
    wandb: bool = False
    wandb_project: str = "trainsvc"

    @classmethod
    def from_dict(cls, raw: dict[str, Any], owner: str | None = None) -> KaggleSpec:
        """Validate the section; ``owner`` (the Kaggle user name) fills a missing ``owner``.

        Raises:
            ConfigError: naming every bad field and what is allowed.
        """
        errors: list[FieldError] = []
        spec = cls()
        known = {f for f in cls.__dataclass_fields__}
        for key in sorted(set(raw) - known):
            errors.append(
                FieldError(f"kaggle.{key}", f"unknown field; allowed: {', '.join(sorted(known))}")
            )
        spec.owner = str(raw.get("owner") or owner or "")
        if not spec.owner:
            errors.append(
                FieldError(
                    "kaggle.owner", "required: your Kaggle user name (or set KAGGLE_USERNAME)"
                )
            )
        slug = raw.get("slug", "")
        if not isinstance(slug, str) or not _SLUG.match(slug):
            errors.append(
                FieldError(
                    "kaggle.slug",
                    f"must be 5-42 of [a-z0-9-], not starting or ending with '-', got {slug!r}",
                )
            )
        else:
            spec.slug = slug
        for name in ("enable_gpu", "enable_internet", "wandb"):
            value = raw.get(name, getattr(spec, name))
            if not isinstance(value, bool):
                errors.append(FieldError(f"kaggle.{name}", f"must be true or false, got {value!r}"))
            else:
                setattr(spec, name, value)
        shape = raw.get("machine_shape", spec.machine_shape)
        if shape is not None and shape not in MACHINE_SHAPES:
            errors.append(
                FieldError(
                    "kaggle.machine_shape",
                    f"must be one of {', '.join(MACHINE_SHAPES)}, got {shape!r}",
                )
            )
        else:
            spec.machine_shape = shape
        for name in ("dataset_sources",):
            refs = raw.get(name, [])
            if not isinstance(refs, list) or not all(
                isinstance(r, str) and _REF.match(r) for r in refs
            ):
                errors.append(
                    FieldError(
                        f"kaggle.{name}", f"must be a list of 'owner/slug' strings, got {refs!r}"
                    )
                )
            else:
                spec.dataset_sources = list(refs)
        wheels = raw.get("wheels_dataset")
        if wheels is not None and not (isinstance(wheels, str) and _REF.match(wheels)):
            errors.append(
                FieldError("kaggle.wheels_dataset", f"must be 'owner/slug', got {wheels!r}")
            )
        else:
            spec.wheels_dataset = wheels
        pkgs = raw.get("packages", spec.packages)
        if (
            not isinstance(pkgs, list)
            or not pkgs
            or not all(isinstance(p, str) and p for p in pkgs)
        ):
            errors.append(
                FieldError(
                    "kaggle.packages",
                    f"must be a non-empty list of pip requirement strings, got {pkgs!r}",
                )
            )
        else:
            spec.packages = list(pkgs)
        hours = raw.get("session_hours", spec.session_hours)
        if (
            isinstance(hours, bool)
            or not isinstance(hours, int | float)
            or not 0 < hours <= MAX_SESSION_HOURS
        ):
            errors.append(
                FieldError(
                    "kaggle.session_hours",
                    f"must be a number in (0, {MAX_SESSION_HOURS}], got {hours!r}",
                )
            )
        else:
            spec.session_hours = float(hours)
        minutes = raw.get("checkpoint_minutes", spec.checkpoint_minutes)
        if (
            isinstance(minutes, bool)
            or not isinstance(minutes, int | float)
            or not 0 < minutes <= 720
        ):
            errors.append(
                FieldError(
                    "kaggle.checkpoint_minutes", f"must be a number in (0, 720], got {minutes!r}"
                )
            )
        else:
            spec.checkpoint_minutes = float(minutes)
        project = raw.get("wandb_project", spec.wandb_project)
        if not isinstance(project, str) or not project:
            errors.append(
                FieldError("kaggle.wandb_project", f"must be a non-empty string, got {project!r}")
            )
        else:
            spec.wandb_project = project
        if errors:
            raise ConfigError(errors)
        return spec


def kernel_id(spec: KaggleSpec, session: int) -> str:
    """The kernel of session ``session`` (1-based): ``owner/slug-sN``."""
    return f"{spec.owner}/{spec.slug}-s{session}"


def bootstrap_source() -> str:
    """The bootstrapper script's source, as shipped in this package."""
    return (
        resources.files("trainsvc_launchers")
        .joinpath("_assets", BOOTSTRAP_FILE)
        .read_text(encoding="utf-8")
    )


def embed_spec(source: str, spec: dict[str, Any]) -> str:
    """The bootstrapper with the run's spec embedded (a JSON literal in place of the marker)."""
    if _EMBED_MARKER not in source:
        raise ValueError(f"bootstrapper source lacks the marker line {_EMBED_MARKER!r}")
    literal = pprint.pformat(json.loads(json.dumps(spec)), sort_dicts=True, width=100)
    return source.replace(_EMBED_MARKER, f"EMBEDDED_SPEC: dict[str, Any] = {literal}", 1)


def bootstrap_spec(cfg: LaunchConfig, spec: KaggleSpec, session: int) -> dict[str, Any]:
    """What the bootstrapper needs to know about the run, as plain JSON."""
    return {
        "launch": {k: v for k, v in cfg.to_dict().items() if k != "kaggle"},
        "kernel_id": kernel_id(spec, session),
        "session": session,
        "packages": spec.packages,
        "session_hours": spec.session_hours,
        "checkpoint_minutes": spec.checkpoint_minutes,
        "wandb": spec.wandb,
        "wandb_project": spec.wandb_project,
    }


def build_kernel_folder(cfg: LaunchConfig, spec: KaggleSpec, session: int, folder: Path) -> Path:
    """Write the kernel folder of session ``session`` and return it.

    ``kernel_sources`` holds the previous session's kernel (whose output is the
    checkpoint to resume from); ``dataset_sources`` the configured datasets
    plus the wheels dataset for offline installs.
    """
    kid = kernel_id(spec, session)
    datasets = list(spec.dataset_sources)
    if spec.wheels_dataset and spec.wheels_dataset not in datasets:
        datasets.append(spec.wheels_dataset)
    metadata = {
        "id": kid,
        "title": kid.split("/", 1)[1],
        "code_file": BOOTSTRAP_FILE,
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": spec.enable_gpu,
        "enable_internet": spec.enable_internet,
        "machine_shape": spec.machine_shape,
        "dataset_sources": datasets,
        "kernel_sources": [kernel_id(spec, session - 1)] if session > 1 else [],
        "competition_sources": [],
        "model_sources": [],
    }
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / METADATA_FILE, metadata)
    script = embed_spec(bootstrap_source(), bootstrap_spec(cfg, spec, session))
    write_text_atomic(folder / BOOTSTRAP_FILE, script)
    return folder
