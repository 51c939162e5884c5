"""The asyncio trainsvc client: `connect()` and `AsyncClient`.

The same calls, options and errors as the sync `trainsvc_client.Client`: the
channel (retries, TLS, token, keepalive) comes from the shared `ServiceConfig`,
requests from the same builders, and failures raise the same `TrainsvcError`
subclasses, with the rich details of the call's status.

>>> from trainsvc_client import aio
>>> async def main() -> None:                            # doctest: +SKIP
...     async with aio.connect("127.0.0.1:50051") as client:
...         run = await client.create_run("emergence", step_budget=2000)
...         async for frame in client.stream_frames(run.name, max_rate_hz=10):
...             print(frame.step)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar, Unpack

import grpc
from google.protobuf.message import Message
from grpc import aio as grpc_aio
from trainsvc_api.v1 import trainsvc_pb2 as pb
from trainsvc_api.v1 import trainsvc_pb2_grpc as pb_grpc

from trainsvc_client import _requests as req
from trainsvc_client._channel import (
    DEFAULT_ADDRESS,
    DEFAULT_TIMEOUT_S,
    BaseClient,
    ConnectOptions,
    ServiceConfig,
    run_name,
)
from trainsvc_client._errors import TrainsvcError, from_rpc_error
from trainsvc_client._models import AsyncModelsApi
from trainsvc_client._trajectories import AsyncTrajectoriesApi

__all__ = [
    "AsyncClient",
    "AsyncModelsApi",
    "AsyncStream",
    "AsyncTrajectoriesApi",
    "ServiceConfig",
    "connect",
    "connect_config",
    "run_name",
]

T = TypeVar("T")


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation of the current task that gRPC reported as a CANCELLED status."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class AsyncStream(Generic[T]):
    """A server stream: ``async for`` its messages, `cancel()` to end it.

    Iteration raises `TrainsvcError` on failure and simply stops after `cancel()`
    or when the server ends the stream. Cancelling the iterating task cancels the
    call (a cancellation, never a CANCELLED `TrainsvcError`).
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = False

    async def __aiter__(self) -> AsyncIterator[T]:
        try:
            async for message in self._call:
                yield message
        except grpc_aio.AioRpcError as err:
            _raise_if_cancelled()
            if self._cancelled and err.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error(err) from None
        except asyncio.CancelledError:
            self._call.cancel()
            raise

    def cancel(self) -> None:
        """End the stream (the iterator stops)."""
        self._cancelled = True
        self._call.cancel()


class AsyncClient(BaseClient):
    """An asyncio connection to one trainsvc service; see `trainsvc_client.Client`.

    Every method is the sync client's, awaited; streams are `AsyncStream`.
    Create it inside the running event loop; use ``async with`` or await `close()`.
    """

    def __init__(
        self,
        channel: grpc_aio.Channel,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(token=token, timeout=timeout)
        self._channel = channel
        self._stub = pb_grpc.TrainServiceStub(channel)
        self.models = AsyncModelsApi(channel, self._unary)
        """The model registry (`AsyncModelsApi`, the sync client's `ModelsApi` awaited)."""
        self.trajectories = AsyncTrajectoriesApi(channel, self._unary)
        """The trajectory store's windows and data quality (`AsyncTrajectoriesApi`)."""

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (open streams end)."""
        await self._channel.close(grace=None)

    @property
    def channel(self) -> grpc_aio.Channel:
        """The underlying gRPC channel (for health checks or reflection)."""
        return self._channel

    async def _unary(
        self, method: Callable[..., Awaitable[T]], request: Message, timeout: float | None
    ) -> T:
        try:
            return await method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc_aio.AioRpcError as err:
            _raise_if_cancelled()
            raise from_rpc_error(err) from None

    async def create_run(
        self,
        kind: str | int,
        *,
        step_budget: int,
        timeout: float | None = None,
        **fields: Unpack[req.RunFields],
    ) -> pb.Run:
        """Create and start a run (arguments as `Client.create_run`)."""
        request = req.create_run(kind, step_budget, **fields)
        return await self._unary(self._stub.CreateRun, request, timeout)

    async def get_run(self, run: str, *, timeout: float | None = None) -> pb.Run:
        """Return one run."""
        request = pb.GetRunRequest(name=run_name(run))
        return await self._unary(self._stub.GetRun, request, timeout)

    async def list_runs_page(
        self,
        *,
        state: int = pb.Run.STATE_UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> pb.ListRunsResponse:
        """Return one page of runs (newest first), optionally only in `state`."""
        request = req.list_runs(state, page_size, page_token)
        return await self._unary(self._stub.ListRuns, request, timeout)

    async def list_runs(
        self, *, state: int = pb.Run.STATE_UNSPECIFIED, page_size: int = 100
    ) -> AsyncIterator[pb.Run]:
        """Yield every run (newest first), following page tokens."""
        token = ""
        while True:
            page = await self.list_runs_page(state=state, page_size=page_size, page_token=token)
            for run in page.runs:
                yield run
            token = page.next_page_token
            if not token:
                return

    async def pause_run(self, run: str, *, timeout: float | None = None) -> pb.Run:
        """Pause a run: it finishes its step and checkpoints (returns when PAUSED)."""
        request = pb.PauseRunRequest(name=run_name(run))
        return await self._unary(self._stub.PauseRun, request, timeout)

    async def resume_run(
        self, run: str, *, checkpoint: str = "", timeout: float | None = None
    ) -> pb.Run:
        """Resume a PAUSED or INTERRUPTED run (optionally from one of its checkpoints)."""
        request = pb.ResumeRunRequest(name=run_name(run), checkpoint=checkpoint)
        return await self._unary(self._stub.ResumeRun, request, timeout)

    async def stop_run(self, run: str, *, timeout: float | None = None) -> pb.Run:
        """Stop a run for good (a final checkpoint is saved first)."""
        request = pb.StopRunRequest(name=run_name(run))
        return await self._unary(self._stub.StopRun, request, timeout)

    async def save_checkpoint(self, run: str, *, timeout: float | None = None) -> pb.Checkpoint:
        """Save a checkpoint of a RUNNING or PAUSED run now and return it."""
        request = pb.SaveCheckpointRequest(name=run_name(run))
        return await self._unary(self._stub.SaveCheckpoint, request, timeout)

    async def list_checkpoints(
        self, run: str, *, timeout: float | None = None
    ) -> list[pb.Checkpoint]:
        """Return a run's checkpoints, oldest first."""
        request = pb.ListCheckpointsRequest(parent=run_name(run))
        return list((await self._unary(self._stub.ListCheckpoints, request, timeout)).checkpoints)

    async def get_run_metrics(
        self, run: str, *, timeout: float | None = None
    ) -> list[tuple[int, dict[str, float]]]:
        """A run's metric history, ``(step, metrics)`` oldest first (see `Client`)."""
        request = pb.GetRunMetricsRequest(name=run_name(run))
        reply = await self._unary(self._stub.GetRunMetrics, request, timeout)
        return [(p.step, dict(p.metrics)) for p in reply.points]

    def stream_frames(
        self, run: str, *, max_rate_hz: float = 0.0, timeout: float | None = None
    ) -> AsyncStream[pb.Frame]:
        """Stream a run's frames (newest wins), at most `max_rate_hz` per second (0 = 30)."""
        request = pb.StreamFramesRequest(name=run_name(run), max_rate_hz=max_rate_hz)
        return AsyncStream(
            self._stub.StreamFrames(request, timeout=timeout, metadata=self._metadata)
        )

    def stream_events(
        self,
        run: str,
        *,
        from_sequence: int = 0,
        follow: bool = False,
        timeout: float | None = None,
    ) -> AsyncStream[pb.Event]:
        """Stream events with sequence >= `from_sequence` of a run, or "runs/-" for all."""
        request = req.stream_events(run, from_sequence, follow)
        return AsyncStream(
            self._stub.StreamEvents(request, timeout=timeout, metadata=self._metadata)
        )


def connect(
    address: str = DEFAULT_ADDRESS,
    token: str | None = None,
    **options: Unpack[ConnectOptions],
) -> AsyncClient:
    """Open an asyncio client (arguments as `trainsvc_client.connect`); lazy, like it."""
    return connect_config(ServiceConfig(address, token, **options))


def connect_config(config: ServiceConfig) -> AsyncClient:
    """Open an asyncio client as `config` says (keepalive, reconnect backoff included)."""
    channel = config.open_channel(grpc_aio.secure_channel, grpc_aio.insecure_channel)
    return AsyncClient(channel, token=config.token, timeout=config.timeout)


def is_unavailable(err: TrainsvcError) -> bool:
    """Whether a call failed because the service could not be reached (or refused the token)."""
    return err.code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAUTHENTICATED,
    )
