"""Leaving the Ray cluster waits for the service's Ray calls in progress, lets no new one
in, and frees the workers' Ray objects only inside a call or after the shutdown (Ray ends
a process that touches it while ``ray.shutdown()`` runs)."""

from __future__ import annotations

import threading
import time
import weakref

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


class _RayObject:
    """Stands for an actor handle or object ref: what matters is when it is freed."""


def test_held_ray_objects_are_freed_by_release_or_only_after_the_shutdown() -> None:
    calls, owner = _ClusterCalls(), object()
    freed: list[str] = []
    obj = _RayObject()
    weakref.finalize(obj, freed.append, "first")
    calls.hold(owner, obj)
    del obj  # the owner's thread drops its reference: the held one keeps it alive
    assert freed == []
    calls.release(owner)
    assert freed == ["first"]

    late = _RayObject()
    weakref.finalize(late, freed.append, "late")
    calls.hold(owner, late)
    del late
    inside, release = threading.Event(), threading.Event()

    def busy_caller() -> None:  # keeps leave() waiting, as a controller thread in ray.wait
        with calls.call():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=busy_caller)
    thread.start()
    assert inside.wait(10)
    leaver = threading.Thread(target=calls.leave, kwargs={"timeout": 10})
    leaver.start()
    time.sleep(0.2)
    calls.release(owner)  # while leaving: not freed now...
    assert freed == ["first"]
    release.set()
    leaver.join(10)
    thread.join(10)
    assert freed == ["first", "late"]  # ...but once Ray is down


class _Owner:
    """Stands for a worker's handle (identity-hashed, as `_RayHandle` is)."""


def test_an_unreleased_owner_never_lets_a_new_owners_hold_free_its_objects() -> None:
    calls = _ClusterCalls()
    freed: list[str] = []
    obj = _RayObject()
    weakref.finalize(obj, freed.append, "old")
    owner = _Owner()
    calls.hold(owner, obj)
    old_id = id(owner)
    del obj, owner  # dropped without release (a handle lost on an error path)
    # New owners are made until one reuses the old one's address, as CPython does
    # once that owner is gone; its objects must stay held until the shutdown.
    owners = []
    for _ in range(10_000):
        owners.append(_Owner())
        if id(owners[-1]) == old_id:
            break
        owners.pop()
    calls.hold(owners[-1] if owners else _Owner(), _RayObject())
    assert freed == []
    calls.leave(timeout=1)
    assert freed == ["old"]
