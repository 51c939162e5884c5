"""JAX's persistent compilation cache: on by default, in JAX's own directory or the user's cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import jax

_enabled: Path | None = None


def default_cache_dir() -> Path:
    """``$TRAINSVC_CACHE_DIR``, else the platform's user cache dir + ``trainsvc/jax``.

    Linux: ``$XDG_CACHE_HOME`` or ``~/.cache``; macOS: ``~/Library/Caches``;
    Windows: ``%LOCALAPPDATA%``.
    """
    env = os.environ.get("TRAINSVC_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "jax"
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "trainsvc" / "jax"


def configured_cache_dir() -> Path | None:
    """The directory JAX's own setting names (``JAX_COMPILATION_CACHE_DIR``, or
    ``jax.config.update("jax_compilation_cache_dir", ...)`` by the caller), if any."""
    value = jax.config.jax_compilation_cache_dir  # type: ignore[attr-defined]
    return Path(value).expanduser() if value else None


def enable_compilation_cache(directory: str | os.PathLike[str] | None = None) -> Path:
    """Turns on JAX's persistent compilation cache in ``directory``.

    Without ``directory``, a directory JAX already has (:func:`configured_cache_dir`)
    is kept, else :func:`default_cache_dir`: a process started with
    ``JAX_COMPILATION_CACHE_DIR`` (a test session, a job that shares one cache)
    does not also write to the user's cache. Every compiled program is cached,
    however quick its compile. JAX reads the setting once per process, so the first
    directory enabled wins; later calls with another directory change nothing and
    return the one in use.
    """
    global _enabled
    if _enabled is not None:
        return _enabled
    if directory:
        path = Path(directory).expanduser()
    else:
        path = configured_cache_dir() or default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    update: Any = jax.config.update
    update("jax_compilation_cache_dir", str(path))
    update("jax_persistent_cache_min_compile_time_secs", 0.0)
    update("jax_persistent_cache_min_entry_size_bytes", 0)
    _enabled = path
    return path
