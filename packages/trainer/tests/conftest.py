"""Shared fixtures: tiny configs and one compile cache for the whole session."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from trainsvc_trainer import Config

TINY: dict[str, dict[str, Any]] = {
    "env": {"height": 8, "width": 8, "n_agents": 4, "n_envs": 2, "episode_length": 8},
    "policy": {"hidden": 8},
    "train": {"rollout_length": 4, "seed": 3},
    "log": {"progress": False, "frame_interval": 0, "save_interval": 0},
}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One JAX compilation cache for this session's processes (the parent and its children)."""
    path = tmp_path_factory.mktemp("jax-cache")
    os.environ["TRAINSVC_CACHE_DIR"] = str(path)
    return path


def tiny_config(cache_dir: Path, **sections: dict[str, Any]) -> Config:
    """The tiny config with per-section overrides."""
    data = {k: dict(v) for k, v in TINY.items()}
    for section, values in sections.items():
        data[section].update(values)
    data["train"]["compile_cache_dir"] = str(cache_dir / "jax")
    return Config.from_dict(data)


def tiny_toml(cache_dir: Path, **sections: dict[str, Any]) -> str:
    """The tiny config as TOML text (for the CLI)."""
    cfg = tiny_config(cache_dir, **sections).to_dict()
    lines: list[str] = []
    for section, values in cfg.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            else:
                lines.append(f"{key} = {value!r}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def make_config(cache_dir: Path) -> Callable[..., Config]:
    """``make_config(log={...}, ...)``: the tiny config with overrides."""
    return lambda **sections: tiny_config(cache_dir, **sections)


@pytest.fixture(scope="session")
def make_toml(cache_dir: Path) -> Callable[..., str]:
    """``make_toml(log={...}, ...)``: the tiny config as TOML text."""
    return lambda **sections: tiny_toml(cache_dir, **sections)
