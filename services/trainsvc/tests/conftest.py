"""Fixtures shared by the service package's tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

AddServicer = Callable[[grpc.aio.Server], Any]
ServeGrpc = Callable[[AddServicer], grpc.Channel]


@pytest.fixture
def serve_grpc() -> Iterator[ServeGrpc]:
    """``serve_grpc(add)``: a real gRPC server on loopback (its servicers added by
    ``add(server)``, run by an event loop on a background thread) and a channel to it;
    everything is stopped when the test ends."""
    with contextlib.ExitStack() as stack:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()

        def stop_loop() -> None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
            loop.close()

        stack.callback(stop_loop)

        def serve(add: AddServicer) -> grpc.Channel:
            async def start() -> tuple[grpc.aio.Server, int]:
                server = grpc.aio.server()
                add(server)
                port = server.add_insecure_port("127.0.0.1:0")
                await server.start()
                return server, port

            server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
            stack.callback(
                lambda: asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(30)
            )
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            stack.callback(channel.close)
            return channel

        yield serve
