"""Test-session setup shared by every member's tests.

One JAX persistent compilation cache for the session: the pytest process and every
process it starts (service workers, launchers, data-parallel peers) inherit
``JAX_COMPILATION_CACHE_DIR``, so a program compiled once, for instance the tiny
model's LoRA step that many language-model tests train, is loaded rather than
compiled again by the next test or the next worker. The emergence trainer already
caches its programs by default (``trainsvc_trainer.enable_compilation_cache``, which
keeps this directory rather than the user's ``~/.cache/trainsvc/jax``); this extends
the same to the language-model paths. It is set at import, before
any test module imports JAX, and removed when the session ends. A value already
in the environment is kept.

Modules marked ``slow(seconds)`` run first, longest first: `make test` runs two xdist
workers that take whole files, and the longest files must not be the last ones.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_OWN_CACHE: str | None = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="trainsvc-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    # Every program, however quick to compile (the tiny test models' mostly are).
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    # A size bound turns on JAX's file lock around each read and write, so a process
    # never reads an entry another one is still writing (without it, writes are not
    # atomic). The session's entries stay far below it.
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))


def _slow_seconds(item: pytest.Item) -> float:
    """The seconds of the item's ``slow`` mark (0 without one)."""
    mark = item.get_closest_marker("slow")
    return float(mark.args[0]) if mark is not None and mark.args else 0.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Runs the modules marked ``slow(seconds)`` first, longest first (a stable sort).

    Two xdist workers take whole files in this order, so the Ray cluster's suite, the
    longest, starts at once instead of leaving one worker alone at the end.
    """
    items.sort(key=lambda item: -_slow_seconds(item))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Removes the session's own cache directory (not one given by the environment)."""
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
