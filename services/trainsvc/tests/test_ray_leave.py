"""Leaving the Ray cluster waits for the service's Ray calls in progress and lets no new
one in (Ray ends a process that calls it during or after ``ray.shutdown()``)."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("ray")

from trainsvc._ray_backend import _ClusterCalls


def test_leave_waits_for_a_call_in_progress_and_refuses_later_ones() -> None:
    calls = _ClusterCalls()
    inside, release = threading.Event(), threading.Event()
    finished: list[float] = []

    def caller() -> None:
        with calls.call() as allowed:
            assert allowed
            inside.set()
            release.wait(10)
            finished.append(time.monotonic())

    thread = threading.Thread(target=caller)
    thread.start()
    assert inside.wait(10)
    left: list[float] = []
    leaver = threading.Thread(
        target=lambda: (calls.leave(timeout=10), left.append(time.monotonic()))
    )
    leaver.start()
    time.sleep(0.3)
    assert not left, "left the cluster while a Ray call was in progress"
    with calls.call() as allowed:  # a call that begins while leaving is refused
        assert not allowed
    release.set()
    thread.join(10)
    leaver.join(10)
    assert left and finished and left[0] >= finished[0]
    with calls.call() as allowed:
        assert not allowed
    calls.join()  # a backend that joins a cluster again lets calls in
    with calls.call() as allowed:
        assert allowed


def test_leave_gives_up_waiting_after_its_timeout() -> None:
    calls = _ClusterCalls()
    stuck = threading.Event()

    def caller() -> None:
        with calls.call():
            stuck.wait(10)

    thread = threading.Thread(target=caller)
    thread.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    calls.leave(timeout=0.3)
    assert 0.25 <= time.monotonic() - t0 < 5
    stuck.set()
    thread.join(10)
