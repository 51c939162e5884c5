"""The gRPC servicer: a thin adapter from the wire API to the RunManager.

Each method validates and converts the request (`_convert`), calls the
manager in a thread (control calls wait for the worker), and converts back.
Domain errors become statuses in `_call` via `_errors.status_of`, the one
mapping. Streams are bounded here by a cap on concurrent streams; frame pacing,
newest-wins slots and the send watchdog are the fan-out's (`_fanout`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc
from trainsvc_api.v1 import trainsvc_pb2 as pb
from trainsvc_api.v1 import trainsvc_pb2_grpc as pb_grpc

from trainsvc import _convert as conv
from trainsvc._domain import (
    InvalidArgumentError,
    ResourceExhaustedError,
    ServiceError,
    parse_run_name,
)
from trainsvc._errors import status_of
from trainsvc._fanout import FrameStreams, Hub, Notifier, send_or_cut
from trainsvc._manager import RunManager
from trainsvc._metric_history import RunMetricHistories
from trainsvc._metrics import Metrics
from trainsvc._rpc import unary_call

log = logging.getLogger("trainsvc.rpc")
T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_RATE_HZ = 30.0
MAX_RATE_HZ = 1000.0
EVENT_BATCH = 500
CONTROL_THREADS = 32
"""Threads for control calls (they wait for a worker's reply), apart from the default
executor that event streams read the registry in: a burst of stream set-ups or event
reads never delays a PauseRun, and a slow checkpoint never delays an event stream."""


def add_to_server(servicer: TrainServicer, server: grpc.aio.Server) -> None:
    """Register `servicer` like the generated `add_TrainServiceServicer_to_server`, except that
    StreamFrames sends pre-serialized `Frame` bytes as they are.

    A frame is serialized once when published and the same bytes go to every subscriber,
    instead of each stream re-encoding the message. The wire format is unchanged.
    """
    captured: dict[str, dict[str, Any]] = {}

    class _Capture:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
            captured[service] = dict(handlers)

    pb_grpc.add_TrainServiceServicer_to_server(servicer, _Capture())  # type: ignore[arg-type]
    ((service, handlers),) = captured.items()
    frames = handlers["StreamFrames"]
    handlers["StreamFrames"] = frames._replace(response_serializer=None)  # bytes pass through
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


class TrainServicer(pb_grpc.TrainServiceServicer):
    """Implements trainsvc.v1.TrainService over a RunManager."""

    def __init__(
        self,
        manager: RunManager,
        hub: Hub[bytes],
        notifier: Notifier,
        metrics: Metrics,
        *,
        max_streams: int,
        histories: RunMetricHistories | None = None,
    ) -> None:
        self.m = manager
        self.histories = histories or RunMetricHistories(manager.run_dir)
        self.hub = hub
        self.notifier = notifier
        self.metrics = metrics
        self.max_streams = max_streams
        self._streams = 0
        self._lock = threading.Lock()
        self.frames = FrameStreams(hub, manager.is_active)
        self._control = ThreadPoolExecutor(CONTROL_THREADS, thread_name_prefix="control")
        self.closing = False
        """Set by :meth:`end_streams` when the service shuts down: event streams then return."""
        self._event_streams: set[asyncio.Future[None]] = set()
        """One future per StreamEvents call in progress, done when it returns."""
        metrics.watch_frames(lambda: self.frames.frames_sent, lambda: hub.dropped)

    # -- plumbing -------------------------------------------------------------

    async def _call(
        self,
        method: str,
        context: Context,
        fn: Callable[[float | None], T],
        *,
        inline: bool = False,
    ) -> T:
        """Run `fn(remaining deadline)`: on a control thread, or `inline` on the loop for reads
        of the registry's in-memory runs (microseconds: a thread hop would cost more)."""
        return await unary_call(
            self.metrics, method, context, fn, inline=inline, executor=self._control
        )

    @contextmanager
    def _stream_slot(self) -> Iterator[None]:
        with self._lock:
            if self._streams >= self.max_streams:
                raise ResourceExhaustedError(
                    f"too many concurrent streams (max {self.max_streams}); try again later"
                )
            self._streams += 1
        self.metrics.streams.inc()
        try:
            yield
        finally:
            with self._lock:
                self._streams -= 1
            self.metrics.streams.dec()

    @staticmethod
    async def _abort(context: Context, exc: ServiceError) -> None:
        await context.abort_with_status(status_of(exc))

    # -- unary ----------------------------------------------------------------

    async def CreateRun(self, request: pb.CreateRunRequest, context: Context) -> pb.Run:  # noqa: N802
        def fn(timeout: float | None) -> pb.Run:
            spec, run_id = conv.spec_from_request(request)
            return conv.run_to_proto(self.m.create_run(spec, run_id))

        return await self._call("CreateRun", context, fn)

    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.Run:  # noqa: N802
        return await self._call(
            "GetRun",
            context,
            lambda _t: conv.run_to_proto(self.m.get_run(parse_run_name(request.name))),
            inline=True,
        )

    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:  # noqa: N802
        def fn(timeout: float | None) -> pb.ListRunsResponse:
            state = conv.state_filter(request.state)
            limit, cursor = conv.page_args(request)
            runs = self.m.list_runs(state, limit + 1, cursor)
            more = len(runs) > limit
            runs = runs[:limit]
            return pb.ListRunsResponse(
                runs=[conv.run_to_proto(r) for r in runs],
                next_page_token=conv.page_token(runs[-1]) if more and runs else "",
            )

        return await self._call("ListRuns", context, fn, inline=True)

    async def PauseRun(self, request: pb.PauseRunRequest, context: Context) -> pb.Run:  # noqa: N802
        return await self._call(
            "PauseRun",
            context,
            lambda t: conv.run_to_proto(self.m.pause(parse_run_name(request.name), t)),
        )

    async def ResumeRun(self, request: pb.ResumeRunRequest, context: Context) -> pb.Run:  # noqa: N802
        return await self._call(
            "ResumeRun",
            context,
            lambda t: conv.run_to_proto(
                self.m.resume(parse_run_name(request.name), request.checkpoint, t)
            ),
        )

    async def StopRun(self, request: pb.StopRunRequest, context: Context) -> pb.Run:  # noqa: N802
        return await self._call(
            "StopRun",
            context,
            lambda t: conv.run_to_proto(self.m.stop(parse_run_name(request.name), t)),
        )

    async def SaveCheckpoint(  # noqa: N802
        self, request: pb.SaveCheckpointRequest, context: Context
    ) -> pb.Checkpoint:
        return await self._call(
            "SaveCheckpoint",
            context,
            lambda t: conv.checkpoint_to_proto(
                self.m.save_checkpoint(parse_run_name(request.name), t)
            ),
        )

    async def ListCheckpoints(  # noqa: N802
        self, request: pb.ListCheckpointsRequest, context: Context
    ) -> pb.ListCheckpointsResponse:
        def fn(timeout: float | None) -> pb.ListCheckpointsResponse:
            run_id = parse_run_name(request.parent, "parent")
            return pb.ListCheckpointsResponse(
                checkpoints=[conv.checkpoint_to_proto(c) for c in self.m.list_checkpoints(run_id)]
            )

        return await self._call("ListCheckpoints", context, fn, inline=True)

    async def GetRunMetrics(  # noqa: N802
        self, request: pb.GetRunMetricsRequest, context: Context
    ) -> pb.RunMetrics:
        def fn(timeout: float | None) -> pb.RunMetrics:
            run = self.m.get_run(parse_run_name(request.name))  # NOT_FOUND for no such run
            return pb.RunMetrics(
                name=run.name,
                points=[
                    pb.MetricPoint(step=step, metrics=metrics)
                    for step, metrics in self.histories.points(run.id)
                ],
            )

        return await self._call("GetRunMetrics", context, fn)

    # -- streams --------------------------------------------------------------

    async def StreamFrames(  # type: ignore[override]  # noqa: N802
        self, request: pb.StreamFramesRequest, context: Context
    ) -> None:
        try:
            run_id = parse_run_name(request.name)
            rate = request.max_rate_hz or DEFAULT_RATE_HZ
            if not math.isfinite(rate) or not 0 < rate <= MAX_RATE_HZ:
                raise InvalidArgumentError(
                    "max_rate_hz",
                    f"must be in (0, {MAX_RATE_HZ:g}] (0 = {DEFAULT_RATE_HZ:g}), got {request.max_rate_hz}",
                )
            self.m.get_run(run_id)  # in memory: NOT_FOUND before the stream starts
            with self._stream_slot():
                await self.frames.stream(run_id, rate, context.write, context.done, context.peer())
        except ServiceError as exc:
            await self._abort(context, exc)

    async def end_streams(self, timeout: float) -> None:
        """Let following event streams end normally (the service is shutting down), and
        wait up to `timeout` seconds for them to return.

        Without this, the server's stop cancels them mid-wait and gRPC logs each
        cancellation as an unhandled error. The wait matters on a loaded machine: a
        stream's last read of the events can outlast the server's stop grace.
        """
        self.closing = True
        self.notifier.notify()
        if self._event_streams:
            await asyncio.wait(list(self._event_streams), timeout=timeout)

    def close(self) -> None:
        """Let the control threads go once their calls are done (the server has stopped)."""
        self._control.shutdown(wait=False)

    async def StreamEvents(  # type: ignore[override]  # noqa: N802
        self, request: pb.StreamEventsRequest, context: Context
    ) -> None:
        try:
            run_id = None if request.name == "runs/-" else parse_run_name(request.name)
            if request.from_sequence < 0:
                raise InvalidArgumentError(
                    "from_sequence", f"must be >= 0, got {request.from_sequence}"
                )
            if run_id is not None:
                self.m.get_run(run_id)  # in memory: NOT_FOUND before the stream starts
            with self._stream_slot():
                await self._stream_events(run_id, request.from_sequence, request.follow, context)
        except ServiceError as exc:
            await self._abort(context, exc)

    async def _stream_events(
        self, run_id: str | None, sequence: int, follow: bool, context: Context
    ) -> None:
        loop = asyncio.get_running_loop()
        waiter = self.notifier.register(loop)
        returned: asyncio.Future[None] = loop.create_future()
        self._event_streams.add(returned)
        try:
            while not context.done():
                events = await asyncio.to_thread(self.m.events, run_id, sequence, EVENT_BATCH)
                for event in events:
                    send = context.write(conv.event_to_proto(event))
                    if not await send_or_cut(send, context.peer()):
                        return
                    sequence = event.sequence + 1
                if len(events) == EVENT_BATCH:
                    continue
                if not follow or self.closing:
                    return
                if run_id is not None and not self.m.is_active(run_id):
                    state = self.m.get_run(run_id).state
                    if state.terminal and not await asyncio.to_thread(
                        self.m.has_more_events, run_id, sequence
                    ):
                        return
                await waiter.next(timeout=1.0)
        finally:
            self.notifier.unregister(waiter)
            self._event_streams.discard(returned)
            returned.set_result(None)
