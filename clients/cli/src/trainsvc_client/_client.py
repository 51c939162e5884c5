"""The typed trainsvc client: `connect()` and `Client`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, Unpack

import grpc
from google.protobuf.message import Message
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
from trainsvc_client._errors import from_rpc_error
from trainsvc_client._models import ModelsApi
from trainsvc_client._trajectories import TrajectoriesApi

T = TypeVar("T")


class Stream(Generic[T]):
    """A server stream: iterate for messages, `cancel()` from any thread to end it.

    Iteration raises `TrainsvcError` on failure and simply stops after
    `cancel()` or when the server ends the stream.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = threading.Event()

    def __iter__(self) -> Iterator[T]:
        try:
            yield from self._call
        except grpc.RpcError as err:
            if self._cancelled.is_set() and err.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error(err) from None

    def cancel(self) -> None:
        """End the stream (the iterator stops)."""
        self._cancelled.set()
        self._call.cancel()


class Client(BaseClient):
    """A connection to one trainsvc service.

    Unary calls have a deadline (`timeout`, default 30 s, overridable per
    call) and are retried on UNAVAILABLE with exponential backoff (gRPC's
    retry policy: up to 5 attempts). Failures raise `TrainsvcError`
    subclasses (`NotFoundError`, `InvalidArgumentError` with `.field`, ...).
    Methods take a run as "runs/ID" or "ID" and return the protobuf messages
    of `trainsvc_api.v1.trainsvc_pb2` (typed by their .pyi stubs).
    Use as a context manager or call `close()`.
    """

    def __init__(
        self, channel: grpc.Channel, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        super().__init__(token=token, timeout=timeout)
        self._channel = channel
        self._stub = pb_grpc.TrainServiceStub(channel)
        self.models = ModelsApi(channel, self._unary)
        """The model registry: versions, traffic, promote, roll back (`ModelsApi`)."""
        self.trajectories = TrajectoriesApi(channel, self._unary)
        """The trajectory store's windows and data quality (`TrajectoriesApi`)."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    @property
    def channel(self) -> grpc.Channel:
        """The underlying gRPC channel (for health checks or reflection)."""
        return self._channel

    def _unary(self, method: Callable[..., T], request: Message, timeout: float | None) -> T:
        try:
            return method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def create_run(
        self,
        kind: str | int,
        *,
        step_budget: int,
        timeout: float | None = None,
        **fields: Unpack[req.RunFields],
    ) -> pb.Run:
        """Create and start a run.

        Args:
            kind: "emergence", "othello" or "lora" (or a `Run.Kind` value).
            step_budget: steps to train (> 0): updates, games for othello,
                optimizer steps for lora.
            seed: the run's seed.
            config: the kind's config: a message (`EmergenceConfig`,
                `OthelloConfig`, `LoraConfig`) or a mapping (typed field names,
                other keys as dotted trainer-config overrides; nested tables
                allowed). Paths in a lora config are on the service's machine.
            checkpoint_policy: interval/retention; None for the defaults.
            max_restarts: worker crashes tolerated; None for the default (3).
            display_name: optional label.
            run_id: optional id (``[a-z][a-z0-9-]{0,62}``).
            resume_from: optional "runs/ID/checkpoints/CKPT" to start from.
            resources: what the run's worker needs of its machine (a `Resources` or
                ``{"cpus": 1, "gpus": 1, "memory_bytes": ..., "custom": {...}}``); the
                service's Ray backend places the worker by it, the local one ignores it.
            timeout: deadline in seconds (default: the client's).

        Returns:
            The created run.
        """
        request = req.create_run(kind, step_budget, **fields)
        return self._unary(self._stub.CreateRun, request, timeout)

    def get_run(self, run: str, *, timeout: float | None = None) -> pb.Run:
        """Return one run."""
        return self._unary(self._stub.GetRun, pb.GetRunRequest(name=run_name(run)), timeout)

    def list_runs_page(
        self,
        *,
        state: int = pb.Run.STATE_UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> pb.ListRunsResponse:
        """Return one page of runs (newest first), optionally only in `state`."""
        request = req.list_runs(state, page_size, page_token)
        return self._unary(self._stub.ListRuns, request, timeout)

    def list_runs(
        self, *, state: int = pb.Run.STATE_UNSPECIFIED, page_size: int = 100
    ) -> Iterator[pb.Run]:
        """Yield every run (newest first), following page tokens."""
        token = ""
        while True:
            page = self.list_runs_page(state=state, page_size=page_size, page_token=token)
            yield from page.runs
            token = page.next_page_token
            if not token:
                return

    def pause_run(self, run: str, *, timeout: float | None = None) -> pb.Run:
        """Pause a run: it finishes its step and checkpoints (returns when PAUSED)."""
        return self._unary(self._stub.PauseRun, pb.PauseRunRequest(name=run_name(run)), timeout)

    def resume_run(self, run: str, *, checkpoint: str = "", timeout: float | None = None) -> pb.Run:
        """Resume a PAUSED or INTERRUPTED run (optionally from one of its checkpoints)."""
        request = pb.ResumeRunRequest(name=run_name(run), checkpoint=checkpoint)
        return self._unary(self._stub.ResumeRun, request, timeout)

    def stop_run(self, run: str, *, timeout: float | None = None) -> pb.Run:
        """Stop a run for good (a final checkpoint is saved first)."""
        return self._unary(self._stub.StopRun, pb.StopRunRequest(name=run_name(run)), timeout)

    def save_checkpoint(self, run: str, *, timeout: float | None = None) -> pb.Checkpoint:
        """Save a checkpoint of a RUNNING or PAUSED run now and return it."""
        request = pb.SaveCheckpointRequest(name=run_name(run))
        return self._unary(self._stub.SaveCheckpoint, request, timeout)

    def list_checkpoints(self, run: str, *, timeout: float | None = None) -> list[pb.Checkpoint]:
        """Return a run's checkpoints, oldest first."""
        request = pb.ListCheckpointsRequest(parent=run_name(run))
        return list(self._unary(self._stub.ListCheckpoints, request, timeout).checkpoints)

    def get_run_metrics(
        self, run: str, *, timeout: float | None = None
    ) -> list[tuple[int, dict[str, float]]]:
        """A run's metric history, ``(step, metrics)`` oldest first: every frame's until
        the service's history is full, then evenly thinned over the whole run."""
        request = pb.GetRunMetricsRequest(name=run_name(run))
        reply = self._unary(self._stub.GetRunMetrics, request, timeout)
        return [(p.step, dict(p.metrics)) for p in reply.points]

    def stream_frames(
        self, run: str, *, max_rate_hz: float = 0.0, timeout: float | None = None
    ) -> Stream[pb.Frame]:
        """Stream a run's frames (newest wins), at most `max_rate_hz` per second (0 = 30).

        The stream ends when the run ends; `timeout` (default none) bounds it.
        """
        request = pb.StreamFramesRequest(name=run_name(run), max_rate_hz=max_rate_hz)
        call = self._stub.StreamFrames(request, timeout=timeout, metadata=self._metadata)
        return Stream(call)

    def stream_events(
        self,
        run: str,
        *,
        from_sequence: int = 0,
        follow: bool = False,
        timeout: float | None = None,
    ) -> Stream[pb.Event]:
        """Stream a run's events with sequence >= `from_sequence` ("runs/-" for all runs).

        With `follow`, the stream stays open for new events (until the run
        ends, for one run); otherwise it ends after the backlog.
        """
        request = req.stream_events(run, from_sequence, follow)
        call = self._stub.StreamEvents(request, timeout=timeout, metadata=self._metadata)
        return Stream(call)


def connect(
    address: str = DEFAULT_ADDRESS,
    token: str | None = None,
    **options: Unpack[ConnectOptions],
) -> Client:
    """Open a client to a trainsvc service.

    Args:
        address: "host:port".
        token: bearer token (required when the service listens beyond loopback).
        **options: ``tls`` (use TLS; ``root_certificates``, PEM, trusts a private CA or
            a self-signed certificate, else the system roots are used), ``server_name``
            (override the name checked against the certificate), ``timeout`` (default
            deadline of unary calls, in seconds).

    Returns:
        A `Client`. Connecting is lazy: the first call opens the channel.
    """
    return connect_config(ServiceConfig(address, token, **options))


def connect_config(config: ServiceConfig) -> Client:
    """Open a client as `config` says (lazily, like `connect`)."""
    channel = config.open_channel(grpc.secure_channel, grpc.insecure_channel)
    return Client(channel, token=config.token, timeout=config.timeout)
