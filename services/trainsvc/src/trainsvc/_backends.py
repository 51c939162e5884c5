"""How a run's worker is started: the small interface `RunController` uses.

A backend starts the worker loop of `trainsvc._worker` somewhere and returns
the connection that carries the typed messages of `trainsvc._protocol` to and
from it, and a handle to wait for or kill it. Everything else (pause, resume,
checkpoint, stop, frames, events, restarts) is the controller's and is the same
for every backend.

- `LocalBackend` (``serve --backend local``, the default): a spawned process on
  this machine, talking over a pipe.
- ``trainsvc._ray_backend.RayBackend`` (``serve --backend ray``): a Ray actor
  placed by the run's `ResourceRequest` on a node of a Ray cluster, whose worker
  connects back to the service over TCP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from trainsvc._resources import ResourceRequest
from trainsvc._worker import WorkerJob, worker_main

__all__ = ["Launch", "LocalBackend", "ResourceRequest", "WorkerBackend", "WorkerConnection"]


class WorkerConnection(Protocol):
    """The service's end of the conversation with a worker (a pipe or a socket)."""

    def send(self, obj: Any) -> None:
        """Send one message; raises OSError or ValueError when the worker is unreachable."""
        ...

    def recv(self) -> Any:
        """The next message; raises EOFError or OSError when the worker is gone."""
        ...

    def close(self) -> None:
        """Close the service's end."""
        ...


class WorkerHandle(Protocol):
    """A started worker, as the controller waits for and ends it (a Process's subset)."""

    @property
    def pid(self) -> Any:
        """Something to log that identifies the worker (a process id, an actor id)."""
        ...

    @property
    def exitcode(self) -> int | None:
        """The worker's exit status once it ended; None while it runs, or when unknown."""
        ...

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker to end (at most ``timeout`` seconds)."""
        ...

    def is_alive(self) -> bool:
        """Whether the worker is still running (or waiting to be placed)."""
        ...

    def kill(self) -> None:
        """End the worker now."""
        ...


@dataclass
class Launch:
    """A worker being started: its connection and handle, and what to record about it."""

    conn: WorkerConnection
    handle: WorkerHandle
    start: Any
    """Call to start it (after the controller recorded ``conn`` and ``handle``)."""
    note: str = ""
    """Why the worker may wait to start (no node has the resources), for the run's
    ``state_message``; "" when it should start at once."""


class WorkerBackend(Protocol):
    """Starts the workers of runs."""

    def launch(self, job: WorkerJob, resources: ResourceRequest, name: str) -> Launch:
        """Prepare a worker for ``job``; the controller calls ``Launch.start``."""
        ...

    def lost(self, handle: WorkerHandle) -> str:
        """Why the machine a worker ran on was lost ("" for a crash of the worker itself)."""
        ...

    def close(self) -> None:
        """The service is stopping: release what the backend holds."""
        ...


class LocalBackend:
    """Workers as spawned processes on this machine, talking over a pipe (the default)."""

    def __init__(self, mp: Any) -> None:
        self.mp = mp

    def launch(self, job: WorkerJob, resources: ResourceRequest, name: str) -> Launch:
        """A process running `worker_main` (the request is not checked: one machine)."""
        parent, child = self.mp.Pipe(duplex=True)
        process = self.mp.Process(target=worker_main, args=(child, job), name=name, daemon=False)

        def start() -> None:
            process.start()
            child.close()

        return Launch(parent, process, start)

    def lost(self, handle: WorkerHandle) -> str:
        """A local worker's machine is the service's own: never lost."""
        return ""

    def close(self) -> None:
        """Nothing to release."""
