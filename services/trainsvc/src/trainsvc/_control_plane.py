"""Which instance acts on a shared registry: the lease holder; the others stand by.

With a PostgreSQL registry (`Registry.shared`) several `trainsvc serve` processes
open the same database; `ControlPlane` makes one of them the control plane:

- at start an instance is a **standby**: its registry refuses every write
  (`Registry.require_lease`), its health is NOT_SERVING and `StandbyGate` answers
  every call but health checks and reflection with UNAVAILABLE naming the holder;
- when it wins the lease (`_lease.LeaseKeeper`) it **takes over**: fences its
  writes with the lease's generation, re-reads the runs, and runs the same recovery
  as a restart (`RunManager.recover`): the runs the previous holder left PENDING or
  RUNNING become INTERRUPTED and, with ``--auto-resume``, resume from their newest
  checkpoint (so run directories must be on storage both instances reach);
- an instance that **loses** the lease (taken over, or not renewed for most of its
  time-to-live: a network partition) stops acting at once: it kills its workers
  (no checkpoint: the new holder resumes from the newest one on disk) and exits
  with status 1, so a supervisor restarts it as a standby. Its registry writes are
  fenced by the lease in their own transactions, so none lands after a takeover.

With the embedded SQLite registry there is no lease: the instance is active at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from trainsvc._lease import DEFAULT_TTL_S, Lease, LeaseKeeper
from trainsvc._manager import RunManager
from trainsvc._registry import Registry

log = logging.getLogger("trainsvc.control_plane")

_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
LOST_LEASE_EXIT = 1
"""The exit status of an instance that lost the lease (an error: exit codes are 0 / 1 / 2)."""


class ControlPlane:
    """Decides whether this instance acts on the registry, and makes it do so."""

    def __init__(
        self,
        registry: Registry,
        manager: RunManager,
        *,
        auto_resume: bool,
        name: str,
        ttl_s: float = DEFAULT_TTL_S,
        exit_process: Callable[[int], None] = os._exit,
    ) -> None:
        self.registry = registry
        self.manager = manager
        self.auto_resume = auto_resume
        self.recovered: list[str] = []
        self._exit = exit_process
        self.keeper: LeaseKeeper | None = None
        self._active = threading.Event()
        if not registry.shared:
            self._active.set()
            return
        holder = f"{name}@{socket.gethostname()}:{os.getpid()}"
        self.keeper = LeaseKeeper(
            Lease(registry.location, holder, ttl_s),
            on_acquired=self._take_over,
            on_lost=self._lost,
        )
        registry.require_lease(None)  # a standby until the lease is won

    @property
    def active(self) -> bool:
        """This instance acts on the registry (it holds the lease, or there is none)."""
        return self._active.is_set() and (self.keeper is None or self.keeper.active)

    def start(self) -> list[str]:
        """Without a lease: recover at once (returns the runs marked INTERRUPTED). With
        one: start competing for it (recovery runs when it is won)."""
        if self.keeper is None:
            self.recovered = self.manager.recover(auto_resume=self.auto_resume)
        else:
            self.keeper.start()
        return self.recovered

    def wait_active(self, timeout: float | None = None) -> bool:
        """Block until this instance acts on the registry (tests and `--demo`)."""
        return self._active.wait(timeout)

    def standby_message(self) -> str:
        """Why a call was refused on a standby."""
        holder = self.keeper.holder if self.keeper is not None else None
        who = f"{holder.holder} holds its lease" if holder else "another instance holds its lease"
        return (
            f"this trainsvc instance is a standby for the registry {self.registry.describe()} "
            f"({who}); call the active instance, or retry: this one takes over when the "
            "lease expires"
        )

    def _take_over(self, generation: int) -> None:
        assert self.keeper is not None
        self.registry.require_lease(self.keeper.lease.holder, generation)
        self.registry.reload()
        try:
            self.recovered = self.manager.recover(auto_resume=self.auto_resume)
        except Exception:
            log.exception("recovering the runs after taking the lease over failed")
        self._active.set()
        log.warning(
            "took over as the control plane of the registry",
            extra={
                "registry": self.registry.describe(),
                "generation": generation,
                "interrupted_runs": self.recovered,
            },
        )

    def _lost(self, reason: str) -> None:
        """Stop acting now: kill the workers, exit (a supervisor restarts us as a standby)."""
        self._active.clear()
        # Without the manager's or the controllers' locks: a thread holding one may wait
        # on the registry, whose connection may hang (the partition that cost the lease).
        controllers = list(self.manager.controllers.values())
        for ctl in controllers:
            ctl.expect_exit = True  # an expected exit: the worker is not restarted
            proc = ctl.process
            if proc is not None:
                try:
                    proc.kill()
                except Exception as exc:  # already gone
                    log.warning("killing a worker failed: %s", exc, extra={"run": ctl.run_id})
        self.registry.require_lease(None)
        log.critical(
            "lost the registry's lease: workers killed, exiting",
            extra={"reason": reason, "killed_workers": [c.run_id for c in controllers]},
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._exit(LOST_LEASE_EXIT)

    def stop(self) -> None:
        """Stop renewing and release the lease (after the runs were checkpointed)."""
        if self.keeper is not None:
            self.keeper.stop(release=True)


class StandbyGate(grpc.aio.ServerInterceptor):
    """Refuse every call but health checks and reflection while the instance stands by."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Pass calls on when active; otherwise answer UNAVAILABLE naming the holder."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or self.plane.active or method.startswith(_OPEN_PREFIXES):
            return handler
        message = self.plane.standby_message()

        async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, message)

        if handler.response_streaming:
            if handler.request_streaming:
                return grpc.stream_stream_rpc_method_handler(refuse)
            return grpc.unary_stream_rpc_method_handler(refuse)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)
