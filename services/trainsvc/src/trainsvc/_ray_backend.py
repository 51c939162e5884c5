"""Workers as Ray actors on the nodes of an existing Ray cluster (``serve --backend ray``).

Each run's worker is a Ray actor placed by the run's `ResourceRequest`. The
actor starts the very same worker loop (`trainsvc._worker.worker_main`) in a
child process on its node, and that child connects back to the service over
TCP (`multiprocessing.connection`, one listener per service, a random key per
worker, checked both ways before anything is unpickled). The connection carries
the typed messages of `trainsvc._protocol`, exactly as the local pipe does, so
pause, resume, checkpoint, stop, frames and events take the controller's usual
paths.

When the node dies its actor dies (the raylet takes its workers along, and the
child dies with the actor: ``PR_SET_PDEATHSIG``), the connection drops, and the
controller hears from `RayBackend.lost` that the machine was lost rather than
the worker crashing: the run becomes INTERRUPTED, or with ``--auto-resume``
restarts on another node from the newest checkpoint (which must be in storage
every node reaches: the service's data directory, at the same path).

A connection cut while the node lives (a network partition, a reset) ends the
worker with `LINK_LOST_EXIT`; the service counts that, too, as the machine being
lost rather than a crash. The workers connect to ``--ray-listen HOST:PORT`` when
it is given, else to the address Ray has for the service's machine (any free
port).

The nodes run what is installed on them: trainsvc and the run's kind must be
installed in the Python environment that ``ray start`` was run from.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import ipaddress
import logging
import os
import pickle
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import AuthenticationError
from multiprocessing.connection import (
    Client,
    Connection,
    Listener,
    answer_challenge,
    deliver_challenge,
)
from typing import Any

# Workers run with the packages installed on the nodes. Ray's `uv run` hook (on by
# default) would instead package the service's working directory and start every worker
# under `uv run`, which needs the project and the network on each node: a worker then
# never starts when the service itself was launched through `uv run` (`make test` does).
# Read when ray is imported, so set first.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import ray

from trainsvc import _protocol as proto
from trainsvc._backends import Launch, ResourceRequest, WorkerHandle
from trainsvc._worker import FAULT_ENV, WorkerJob

WAIT_SLICE_S = 0.5
"""The longest single wait of a controller thread inside Ray (see `_ClusterCalls`)."""
LEAVE_S = 15.0
"""How long leaving the cluster waits for Ray calls in progress to return."""
ACTOR_JOIN_S = 10.0
"""After a worker's connection ended, how long Ray is given to report its actor's end;
past it the actor is killed and its machine counted as lost."""
CONNECT_CHECK_S = 5.0
"""How long ``--ray-address`` may take to accept a TCP connection at start-up."""
HANDSHAKE_S = 30.0
"""How long a connecting worker may take to say which run it is."""
LINK_LOST_EXIT = 75
"""The exit status of a Ray worker whose connection to the service failed."""
LINK_TIMEOUT_S = 30
"""How long a worker's connection may go without the peer acknowledging anything (a
partition that drops packets silently) before either end treats it as cut."""
_KEEPALIVE_S = 5
_TOKEN_BYTES = 128
"""The most a connecting worker's first message may hold: its token and its node's id."""
_PR_SET_PDEATHSIG = 1


log = logging.getLogger("trainsvc.ray")


class RayBackendError(Exception):
    """The Ray backend cannot start (the message names the flag to fix)."""


def parse_listen(text: str) -> tuple[str, int]:
    """``--ray-listen HOST:PORT``: an IPv4 address or a host name, and a port (0: any).

    Raises:
        RayBackendError: naming ``--ray-listen`` and what is wrong.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise RayBackendError(
            f"--ray-listen {text!r}: expected HOST:PORT (PORT 0-65535; 0 picks a free port)"
        )
    if host.startswith("[") or ":" in host:
        raise RayBackendError(f"--ray-listen {text!r}: only IPv4 addresses and host names")
    return host, int(port)


def watch_link(conn: Connection) -> None:
    """Make a silent partition end ``conn`` within about `LINK_TIMEOUT_S`.

    TCP keepalive probes an idle connection every few seconds, and TCP_USER_TIMEOUT
    bounds how long sent data (or probes) may stay unacknowledged; past it the kernel
    fails the connection (ETIMEDOUT), as it does at once for a reset.
    """
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:  # the same socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", _KEEPALIVE_S),
            ("TCP_KEEPINTVL", _KEEPALIVE_S),
            ("TCP_KEEPCNT", LINK_TIMEOUT_S // _KEEPALIVE_S),
            ("TCP_USER_TIMEOUT", LINK_TIMEOUT_S * 1000),
        ):
            if hasattr(socket, name):  # Linux has them all
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _is_wildcard(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_unspecified
    return False


def _ray_request(r: ResourceRequest) -> dict[str, float]:
    """The request in Ray's resource names; unset CPUs are one CPU."""
    need = {"CPU": r.cpus or 1.0, "GPU": r.gpus, "memory": float(r.memory_bytes)}
    need.update(r.custom)
    return {k: v for k, v in need.items() if v}


def _node_summary(resources: dict[str, float]) -> str:
    shown = {
        k: v
        for k, v in resources.items()
        if not k.startswith("node:") and k != "object_store_memory"
    }
    return (
        ", ".join(
            f"{k} {v / 2**30:.1f} GiB" if k == "memory" else f"{k} {v:g}"
            for k, v in sorted(shown.items())
        )
        or "nothing"
    )


def unplaceable_reason(r: ResourceRequest, nodes: list[dict[str, Any]]) -> str:
    """Why no alive node of ``nodes`` (``ray.nodes()``) can hold ``r``; "" when one can."""
    need = _ray_request(r)
    alive = [n for n in nodes if n.get("Alive")]
    for node in alive:
        have = node.get("Resources", {})
        if all(have.get(k, 0.0) >= v for k, v in need.items()):
            return ""
    listing = "; ".join(
        f"node {n.get('NodeID', '?')[:8]}: {_node_summary(n.get('Resources', {}))}" for n in alive
    )
    return (
        f"waiting for a Ray node with {r.describe()} (CPU 1 when cpus is unset): no node of the "
        f"cluster has it now ({listing or 'no node alive'}); the run starts when such a node "
        "joins, or StopRun ends it"
    )


def _lost_reason(exc: BaseException, node: str = "") -> str:
    """Why a worker's actor ended without its worker exiting (one line); ``node``: the
    id of the node its worker reported from ("" if it never connected)."""
    text = " ".join(str(exc).split())
    if "Node Id: " in text:
        node = text.split("Node Id: ", 1)[1].split()[0]
    if "node has died" in text:
        return f"its Ray node {node[:12]} died".replace("  ", " ")
    if isinstance(exc, ray.exceptions.ActorUnavailableError) and node:
        # The node's raylet stopped answering before the cluster declared the node dead.
        return f"its Ray node {node[:12]} stopped answering (the actor is unavailable)"
    where = f" on node {node[:12]}" if node else ""
    return f"its Ray actor{where} died ({type(exc).__name__}: {text[:300]})"


class _PendingConnection:
    """The service's end of a worker's TCP connection, before and after it connects.

    ``recv`` waits for the worker to connect (a run whose resources no node has waits
    here, PENDING) and ends with EOFError when its actor ended without connecting.
    """

    def __init__(self) -> None:
        self._conn: Connection | None = None
        self._settled = threading.Event()
        self._closed = False
        self.handle: _RayHandle | None = None
        self.forget: Callable[[], None] = lambda: None
        """Drop the backend's record of this worker's key (it will not connect now)."""

    def connected(self, conn: Connection) -> None:
        if self._closed:
            conn.close()
            return
        self._conn = conn
        self._settled.set()

    def recv(self) -> Any:
        while not self._settled.wait(0.5):
            if self._closed or (self.handle is not None and self.handle.ended()):
                raise EOFError("the worker ended before it connected")
        if self._conn is None:
            raise EOFError("the worker ended before it connected")
        return self._conn.recv()

    def send(self, obj: Any) -> None:
        if self._conn is None:
            raise OSError("the worker has not connected yet")
        self._conn.send(obj)

    def close(self) -> None:
        self._closed = True
        self.forget()
        self._settled.set()
        if self._conn is not None:
            self._conn.close()


class _ClusterCalls:
    """The service's Ray calls, so that it leaves the cluster only after the last one.

    Ray ends a process with status 1 when one of its threads calls Ray while (or
    after) ``ray.shutdown()`` runs, and freeing an actor handle or an object ref is
    such a call. Controller threads call Ray only inside `call`, which lets nothing
    in once `leave` has begun; `leave` waits for the calls in progress to return, then
    shuts Ray down. A worker's actor handle and ref are kept here (`hold`) and freed
    inside a call (`release`), or after the shutdown: never by whichever thread drops
    the last reference to the worker's handle.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._inside = 0
        self._leaving = False
        # Keyed by the owner itself (identity hash), which the entry keeps alive: an id()
        # key could be reused by a new owner once an unreleased one was collected, and
        # the new entry would then free the old objects outside any call.
        self._held: dict[object, tuple[Any, ...]] = {}

    def join(self) -> None:
        """The service (again) belongs to a cluster: calls are let in."""
        with self._cond:
            self._leaving = False

    @contextlib.contextmanager
    def call(self) -> Iterator[bool]:
        """Yields whether the caller may call Ray (False once the service leaves)."""
        with self._cond:
            allowed = not self._leaving
            self._inside += allowed
        try:
            yield allowed
        finally:
            if allowed:
                with self._cond:
                    self._inside -= 1
                    self._cond.notify_all()

    def hold(self, owner: object, *objects: Any) -> None:
        """Keep ``owner``'s Ray objects until `release` (call it inside `call`)."""
        with self._cond:
            self._held[owner] = objects

    def release(self, owner: object) -> None:
        """Free ``owner``'s Ray objects now while Ray is up, else after the shutdown (the
        owner must hold no reference of its own to them)."""
        with self.call() as allowed:
            if allowed:
                with self._cond:
                    objects = self._held.pop(owner, ())
                del objects  # freed here, inside the call

    def leave(self, timeout: float = LEAVE_S) -> None:
        """Let no new call in, wait (up to ``timeout``) for the calls in progress, shut Ray
        down, then free the Ray objects still held (Ray ignores that once it is down)."""
        with self._cond:
            self._leaving = True
            drained = self._cond.wait_for(lambda: self._inside == 0, timeout)
        if not drained:
            log.warning("a Ray call outlasted the shutdown wait of %g s", timeout)
        ray.shutdown()
        with self._cond:
            self._held.clear()


_CLUSTER = _ClusterCalls()


class _RayHandle:
    """A worker's Ray actor, as the controller waits for and ends it."""

    def __init__(self) -> None:
        self.actor: Any = None
        self.ref: Any = None
        """The actor's handle and its call's ref (None before it starts and once it ended:
        `_ClusterCalls` frees them)."""
        self._name = "ray-actor"
        self.lost_reason = ""
        self.node = ""
        """The Ray node the worker reported from when it connected ("" until then)."""
        self._exitcode: int | None = None
        self._done = False
        self._killed = False

    @property
    def pid(self) -> str:
        """The actor, for logs."""
        return self._name

    def started(self, actor: Any, ref: Any) -> None:
        """The actor was created and its call made (inside a `_ClusterCalls.call`)."""
        self.actor, self.ref = actor, ref
        actor_id = getattr(actor, "_actor_id", None)
        if actor_id is not None:
            self._name = f"ray-actor:{actor_id.hex()[:12]}"
        _CLUSTER.hold(self, actor, ref)

    @property
    def exitcode(self) -> int | None:
        return self._exitcode

    def ended(self) -> bool:
        """The actor's call returned or failed (without waiting)."""
        if self._killed or self._done:
            return True
        with _CLUSTER.call() as allowed:
            ref = self.ref if allowed else None
            if ref is None:  # leaving the cluster, not started yet, or just released
                return not allowed or self._killed or self._done
            ready = bool(ray.wait([ref], timeout=0)[0])
            del ref  # a Ray object is dropped inside the call (see _ClusterCalls)
            return ready

    def join(self, timeout: float | None = None) -> None:
        if self._done or self.ref is None:
            return
        deadline = time.monotonic() + (ACTOR_JOIN_S if timeout is None else timeout)
        while True:  # in slices, so that leaving the cluster never waits for a long one
            with _CLUSTER.call() as allowed:
                ref = self.ref if allowed else None
                if ref is None:
                    return
                wait_s = min(WAIT_SLICE_S, max(0.0, deadline - time.monotonic()))
                ready = bool(ray.wait([ref], timeout=wait_s)[0])
                if ready:
                    self._collect(ref)
                del ref
            if ready:
                return
            if time.monotonic() >= deadline:
                break
        if timeout is None:  # the connection ended but Ray still holds the actor
            if not self._killed:
                self.lost_reason = (
                    f"its connection ended and Ray did not report the actor's end in "
                    f"{ACTOR_JOIN_S:g} s (node unreachable)"
                )
            self.kill()
            self._done = True

    def _collect(self, ref: Any) -> None:
        """Read the ended actor's exit status, or why it was lost; free its resources."""
        try:
            self._exitcode = int(ray.get(ref))
        except ray.exceptions.RayActorError as exc:  # the actor (or its node) died
            if not self._killed:
                self.lost_reason = _lost_reason(exc, self.node)
        except ray.exceptions.RayError:  # the actor's call failed: a crash (no exit code)
            pass
        if self._exitcode == LINK_LOST_EXIT and not self._killed:
            self.lost_reason = (
                "its connection to the service was cut while its Ray node lived (the worker exited)"
            )
        self._done = True
        self._release()

    def is_alive(self) -> bool:
        return not self._done and not self.ended()

    def kill(self) -> None:
        self._killed = True
        self._release()

    def _release(self) -> None:
        """End the actor (its worker ended or is to end), freeing its resources now."""
        with _CLUSTER.call() as allowed:
            actor = self.actor if allowed else None
            if actor is not None:
                with contextlib.suppress(Exception):  # already gone with its node
                    ray.kill(actor, no_restart=True)
            del actor
            self.actor = self.ref = None
            _CLUSTER.release(self)


@ray.remote(max_restarts=0, max_task_retries=0)
class _WorkerActor:
    """Runs one worker process on its node and returns its exit status."""

    def run(
        self,
        job: WorkerJob,
        address: tuple[str, int],
        token: str,
        key: bytes,
        env: dict[str, str],
    ) -> int:
        node = ray.get_runtime_context().get_node_id()
        child = subprocess.Popen(
            [sys.executable, "-c", "from trainsvc._ray_backend import child_main; child_main()"],
            stdin=subprocess.PIPE,
            env={**os.environ, **env},
            preexec_fn=_die_with_parent,
        )
        assert child.stdin is not None
        child.stdin.write(pickle.dumps((job, address, token, key, node)))
        child.stdin.close()
        return child.wait()


def _die_with_parent() -> None:
    """In the worker's child process: be killed when the actor's process dies."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: its parent check ends it
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class _ServiceLink:
    """The worker's end of its TCP connection to the service.

    A failure of the connection (reset, aborted, timed out) ends the worker's process
    at once with `LINK_LOST_EXIT`, which the service reads as "the machine was lost",
    not as a crash of the worker (a local worker exits 0 instead: its service is gone).
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def send(self, obj: Any) -> None:
        try:
            self._conn.send(obj)
        except (OSError, EOFError):
            os._exit(LINK_LOST_EXIT)

    def recv(self) -> Any:
        try:
            return self._conn.recv()
        except (OSError, EOFError):
            os._exit(LINK_LOST_EXIT)

    def poll(self, timeout: float | None = 0.0) -> bool:
        try:
            return self._conn.poll(timeout)
        except (OSError, EOFError):
            os._exit(LINK_LOST_EXIT)

    def close(self) -> None:
        self._conn.close()


def _devices() -> str:
    """The accelerators this process may use, as Ray assigned them (empty: none set)."""
    shown = [
        f"{name}={os.environ[name]}"
        for name in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "NEURON_RT_VISIBLE_CORES")
        if os.environ.get(name)
    ]
    return f", devices {' '.join(shown)}" if shown else ""


def child_main() -> None:
    """The worker's process on a Ray node: connect back to the service, run the worker loop."""
    from trainsvc._worker import worker_main

    job, address, token, key, node = pickle.load(sys.stdin.buffer)
    conn = Client(tuple(address), family="AF_INET")
    watch_link(conn)
    conn.send_bytes(f"{token} {node}".encode())
    answer_challenge(conn, key)
    deliver_challenge(conn, key)
    where = f"{address[0]}:{address[1]}"
    conn.send(
        proto.Log(
            "INFO",
            f"worker on Ray node {node} ({socket.gethostname()}), connected to {where}"
            + _devices(),
        )
    )
    worker_main(_ServiceLink(conn), job)  # type: ignore[arg-type]  # a Connection's subset


class RayBackend:
    """Starts each run's worker as a Ray actor on a node that has its resources."""

    def __init__(self, address: str, listen: str = "") -> None:
        """Connect to the Ray cluster at ``address`` (``host:port`` of its GCS).

        ``listen`` (``--ray-listen HOST:PORT``) is where the workers connect back to: the
        service listens there. HOST 0.0.0.0 listens on every interface, and workers are
        told the address Ray has for this machine; PORT 0 picks a free port. Empty: the
        address Ray has for this machine, a free port.

        Raises:
            RayBackendError: an address is malformed, nothing answers at ``address``, or
                ``listen`` cannot be listened on.
        """
        bind = parse_listen(listen) if listen else None
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise RayBackendError(
                f"--ray-address {address!r}: expected HOST:PORT of a Ray cluster's head node"
            )
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_CHECK_S).close()
        except OSError as exc:
            raise RayBackendError(
                f"--ray-address {address}: no Ray cluster answers there ({exc}); start one "
                "with `ray start --head` or pass the head node's address"
            ) from None
        try:
            ray.init(address=address, namespace="trainsvc", log_to_driver=False)
        except Exception as exc:
            raise RayBackendError(
                f"--ray-address {address}: cannot join the cluster: {exc}"
            ) from None
        _CLUSTER.join()
        ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        bind = bind or (ip, 0)
        try:
            self.listener = Listener(bind, family="AF_INET")  # keys: per worker, below
        except OSError as exc:
            ray.shutdown()
            raise RayBackendError(
                f"--ray-listen {bind[0]}:{bind[1]}: cannot listen there ({exc}); give an "
                "address of this machine that the Ray nodes reach, and a free port"
            ) from None
        port_bound = int(self.listener.address[1])
        self.address: tuple[str, int] = (ip if _is_wildcard(bind[0]) else bind[0], port_bound)
        """Where workers connect to (``--ray-listen``, or Ray's address for this machine)."""
        log.info(
            "Ray workers connect back to %s:%d",
            *self.address,
            extra={"ray_address": address, "listen": f"{bind[0]}:{port_bound}"},
        )
        self._pending: dict[str, tuple[bytes, _PendingConnection]] = {}
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="ray-workers", daemon=True).start()

    def launch(self, job: WorkerJob, resources: ResourceRequest, name: str) -> Launch:
        """An actor with the run's resources whose worker connects back to this service."""
        job = dataclasses.replace(job, cpus=None)  # --worker-cpus pins this machine's CPUs
        token, key = secrets.token_hex(16), secrets.token_bytes(32)
        # The worker's fault-injection test hook follows the service's environment, as
        # a local worker's does (the node's own environment is the raylet's).
        env = {FAULT_ENV: os.environ[FAULT_ENV]} if FAULT_ENV in os.environ else {}
        conn = _PendingConnection()
        handle = _RayHandle()
        conn.handle = handle

        def forget() -> None:
            with self._lock:
                self._pending.pop(token, None)

        conn.forget = forget
        with self._lock:
            self._pending[token] = (key, conn)
        need = _ray_request(resources)
        options: dict[str, Any] = {
            "num_cpus": need.pop("CPU", 0.0),
            "num_gpus": need.pop("GPU", 0.0),
            "name": None,
        }
        if "memory" in need:
            options["memory"] = int(need.pop("memory"))
        options["resources"] = need

        def start() -> None:
            with _CLUSTER.call() as allowed:
                if not allowed:  # the service is leaving the cluster: no worker starts
                    handle.kill()
                    conn.close()
                    return
                actor = _WorkerActor.options(**options).remote()  # type: ignore[attr-defined]
                handle.started(actor, actor.run.remote(job, self.address, token, key, env))
                del actor

        with _CLUSTER.call() as allowed:
            nodes = ray.nodes() if allowed else []  # type: ignore[no-untyped-call]
        note = unplaceable_reason(resources, nodes) if allowed else ""
        return Launch(conn, handle, start, note)

    def lost(self, handle: WorkerHandle) -> str:
        """Why a worker's Ray node (or actor) was lost; "" when the worker itself exited."""
        return handle.lost_reason if isinstance(handle, _RayHandle) else ""

    def _accept(self) -> None:
        while True:
            try:
                conn = self.listener.accept()
            except OSError:  # a connection that failed before it was accepted
                conn = None
            if self._closed:
                if conn is not None:
                    conn.close()
                return
            if conn is None:
                continue
            threading.Thread(target=self._handshake, args=(conn,), daemon=True).start()

    def _handshake(self, conn: Connection) -> None:
        """Match a connecting worker to its launch by token, then check its key both ways."""
        try:
            watch_link(conn)
            if not conn.poll(HANDSHAKE_S):
                raise EOFError("no token")
            token, _, node = conn.recv_bytes(_TOKEN_BYTES).decode("ascii", "replace").partition(" ")
            with self._lock:
                entry = self._pending.pop(token, None)
            if entry is None:
                raise AuthenticationError("unknown worker token")
            key, pending = entry
            deliver_challenge(conn, key)
            answer_challenge(conn, key)
        except (OSError, EOFError, AuthenticationError):
            conn.close()
            return
        if pending.handle is not None:
            pending.handle.node = node
        pending.connected(conn)

    def close(self) -> None:
        """Stop accepting workers and leave the cluster (the runs' actors were ended)."""
        self._closed = True
        with contextlib.suppress(OSError):  # wake the accepting thread
            Client(self.address, family="AF_INET").close()
        self.listener.close()
        _CLUSTER.leave()
