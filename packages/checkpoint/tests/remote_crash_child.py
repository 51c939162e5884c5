"""A child process for the remote crash test: saves large checkpoints to S3 until killed.

Usage:
    python remote_crash_child.py ENDPOINT URL FIRST_STEP

Saves ``state(step)`` for step = FIRST_STEP, FIRST_STEP + 1, ... with a
``RemoteCheckpointManager`` (5 MiB parts, 2 at a time, so that each upload
takes many requests), printing "saving <step>" before each save.
"""

from __future__ import annotations

import sys
from itertools import count
from typing import Any

import numpy as np
import trainsvc_checkpoint as ckpt

PARTS_PER_SAVE = 6


def options(endpoint: str) -> dict[str, Any]:
    return {
        "key": "test",
        "secret": "test",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }


def state(step: int) -> dict[str, Any]:
    """The deterministic state of ``step``: about 30 MiB, six parts of 5 MiB."""
    n = PARTS_PER_SAVE * 5 * 1024 * 1024 // 4
    return {"w": np.full(n, step, np.float32), "b": np.arange(100) + step, "step": step}


def check(tree: Any, step: int) -> None:
    """Raise AssertionError unless ``tree`` is exactly ``state(step)``."""
    assert tree["step"] == step
    np.testing.assert_array_equal(tree["w"], state(step)["w"])
    np.testing.assert_array_equal(tree["b"], state(step)["b"])


def main(endpoint: str, url: str, first: int) -> None:
    manager = ckpt.RemoteCheckpointManager(
        url,
        keep_last=2,
        storage_options=options(endpoint),
        part_size=5 * 1024 * 1024,
        concurrency=2,
    )
    for step in count(first):
        print(f"saving {step}", flush=True)
        manager.save(step, state(step), blocking=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
