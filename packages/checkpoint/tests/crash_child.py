"""A child process for the crash tests: trains a toy state and saves it with the manager.

Usage:
    python crash_child.py loop DIR     save asynchronously in a tight loop, resuming from DIR
    python crash_child.py train DIR    train with signal handlers installed, periodic saves
    python crash_child.py exit DIR     start one asynchronous save and return at once
    python crash_child.py forks DIR    fork a `loop` child for each "fork" line on stdin

Prints "ready" on stdout once it is saving (`forks`: once it takes commands). The state
of step N is ``make_state(N)``, so the parent can check any checkpoint's content.

SIGINT starts at Python's own handler (KeyboardInterrupt), as from an interactive shell,
even when the parent ignores it (a pytest run in the background or as an xdist worker).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from itertools import count
from typing import Any, NamedTuple

import numpy as np
import trainsvc_checkpoint as ckpt


class AdamState(NamedTuple):
    count: Any
    mu: Any
    nu: Any


def make_state(step: int) -> dict[str, Any]:
    """The deterministic training state at ``step``."""
    return {
        "params": {
            "w": np.full((256, 256), step, np.float32),
            "b": np.arange(64, dtype=np.int64) + step,
        },
        "opt_state": (AdamState(np.int64(step), {"w": np.full(512, step, np.float64)}, None),),
        "step": step,
    }


def check_state(tree: Any, step: int) -> None:
    """Raise AssertionError unless ``tree`` is exactly ``make_state(step)``."""
    expected = make_state(step)
    assert tree["step"] == step, (tree["step"], step)
    np.testing.assert_array_equal(tree["params"]["w"], expected["params"]["w"])
    np.testing.assert_array_equal(tree["params"]["b"], expected["params"]["b"])
    assert int(tree["opt_state"][0].count) == step
    np.testing.assert_array_equal(tree["opt_state"][0].mu["w"], expected["opt_state"][0].mu["w"])


def _say_ready() -> None:
    print("ready", flush=True)


def loop(directory: str, ready: Callable[[], None] = _say_ready) -> None:
    manager = ckpt.CheckpointManager(directory, keep_last=2)
    start = (manager.latest_step() or 0) + 1
    ready()
    for step in count(start):
        manager.save(step, make_state(step))


def train(directory: str) -> None:
    manager = ckpt.CheckpointManager(directory, keep_last=3)
    current = (0, make_state(0))
    manager.install_signal_handlers(lambda: current)
    for step in count(1):
        state = make_state(step)  # one "training step"
        current = (step, state)
        if step % 10 == 0:
            manager.save(step, state)
        if step == 30:
            print("ready", flush=True)
        time.sleep(0.002)


def exit_early(directory: str) -> None:
    manager = ckpt.CheckpointManager(directory)
    manager.save(1, {"big": np.ones(4_000_000, np.float32)})
    print("ready", flush=True)


def fork_savers(directory: str) -> None:
    """A fork server: for each "fork" line, forks a child that runs `loop`, prints its pid
    once it saves, then the child's wait status once the parent has killed it.

    The children are real processes that cost no fresh interpreter. They are forked from
    this process, which never starts a thread, rather than from the test process, where
    another test may have loaded JAX (forking a process with JAX's threads can deadlock).
    """
    print("ready", flush=True)
    for command in sys.stdin:
        assert command == "fork\n", command
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child is killed, never returns
            try:
                os.close(read_end)
                loop(directory, ready=functools.partial(os.write, write_end, b"r"))
            finally:
                os._exit(1)
        os.close(write_end)
        assert os.read(read_end, 1) == b"r"
        os.close(read_end)
        print(pid, flush=True)
        print(os.waitpid(pid, 0)[1], flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    mode, directory = sys.argv[1], sys.argv[2]
    modes = {"loop": loop, "train": train, "exit": exit_early, "forks": fork_savers}
    modes[mode](directory)
