"""Where the persistent compilation cache goes: the caller's directory, JAX's own
setting, ``$TRAINSVC_CACHE_DIR``, in that order. Each case is a fresh process,
since JAX reads the setting once per process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Enables the cache (in argv[1], or the default when it is empty), prints the directory
# in use, then compiles one program, which JAX writes to that directory.
_CHILD = """
import sys
import jax, jax.numpy as jnp
from trainsvc_trainer import enable_compilation_cache
print(enable_compilation_cache(sys.argv[1] or None))
jax.jit(lambda x: x * 2.0 + 1.0)(jnp.arange(3.0)).block_until_ready()
"""


def _enable(directory: Path | None, env: dict[str, str]) -> Path:
    """The directory a fresh process's cache used, checked to hold its compiled program."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(directory or "")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    used = Path(out.stdout.strip())
    assert any(p.name.endswith("-cache") for p in used.iterdir()), out.stderr
    return used


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    return {name: tmp_path / name for name in ("jax", "trainsvc", "explicit")}


def _env(dirs: dict[str, Path], *, jax_dir: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["TRAINSVC_CACHE_DIR"] = str(dirs["trainsvc"])
    if jax_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = str(dirs["jax"])
    return env


def _written(path: Path) -> bool:
    return path.exists() and any(path.rglob("*-cache"))


def test_jax_own_directory_is_kept_over_the_trainsvc_default(dirs: dict[str, Path]) -> None:
    assert _enable(None, _env(dirs, jax_dir=True)) == dirs["jax"]
    assert not _written(dirs["trainsvc"])


def test_without_one_the_trainsvc_default_is_used(dirs: dict[str, Path]) -> None:
    assert _enable(None, _env(dirs, jax_dir=False)) == dirs["trainsvc"] / "jax"
    assert not _written(dirs["jax"])


def test_a_directory_given_wins_over_both(dirs: dict[str, Path]) -> None:
    assert _enable(dirs["explicit"], _env(dirs, jax_dir=True)) == dirs["explicit"]
    assert not _written(dirs["jax"]) and not _written(dirs["trainsvc"])
