"""At shutdown, following event streams end normally even when their last read is slow.

A real `TrainsvcServer` on loopback in this process, so the test can slow the
manager's event reads the way a loaded machine does (the lifecycle suite on the
Ray backend, with a cluster on the same 2 CPUs, saw a read outlast the server's
stop grace: gRPC then cancelled the stream and logged the CancelledError).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from trainsvc._server import ServerOptions, TrainsvcServer
from trainsvc_api.v1 import trainsvc_pb2 as pb
from trainsvc_api.v1 import trainsvc_pb2_grpc as pb_grpc

SLOW_READ_S = 3.0
"""Longer than the server's stop grace (2 s)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _follow_then_stop(data: Path) -> tuple[grpc.StatusCode, float]:
    address = f"127.0.0.1:{_free_port()}"
    server = TrainsvcServer(ServerOptions(listen=address, data_dir=data, metrics_listen=""))
    await server.start()
    slow = threading.Event()
    events = server.manager.events

    def slow_events(*args: Any) -> Any:
        if slow.is_set():
            time.sleep(SLOW_READ_S)
        return events(*args)

    server.manager.events = slow_events  # type: ignore[method-assign]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.TrainServiceStub(channel)
        call = stub.StreamEvents(pb.StreamEventsRequest(name="runs/-", follow=True))
        assert server._servicer is not None
        while not server._servicer._streams:  # the stream has started
            await asyncio.sleep(0.05)
        slow.set()
        started = time.monotonic()
        await server.stop()
        stop_s = time.monotonic() - started
        async for _ in call:
            pass
        return await call.code(), stop_s


def test_a_slow_last_read_still_ends_the_following_stream_normally(tmp_path: Path) -> None:
    code, stop_s = asyncio.run(_follow_then_stop(tmp_path / "data"))
    assert code == grpc.StatusCode.OK, code
    assert stop_s >= SLOW_READ_S  # the stop waited for the stream's read, not its grace
