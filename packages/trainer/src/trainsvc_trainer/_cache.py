"""JAX's persistent compilation cache: on by default, under the user's cache directory."""

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


def enable_compilation_cache(directory: str | os.PathLike[str] | None = None) -> Path:
    """Turns on JAX's persistent compilation cache in ``directory`` (default :func:`default_cache_dir`).

    Every compiled program is cached, however quick its compile. JAX reads the
    setting once per process, so the first directory enabled wins; later calls
    with another directory change nothing and return the one in use.
    """
    global _enabled
    if _enabled is not None:
        return _enabled
    path = Path(directory).expanduser() if directory else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    update: Any = jax.config.update
    update("jax_compilation_cache_dir", str(path))
    update("jax_persistent_cache_min_compile_time_secs", 0.0)
    update("jax_persistent_cache_min_entry_size_bytes", 0)
    _enabled = path
    return path
