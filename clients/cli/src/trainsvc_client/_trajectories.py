"""The trajectory store's statistics (trainsvc.v1.TrajectoryService), as `Client.trajectories`
and `AsyncClient.trajectories`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import Message
from trainsvc_api.v1 import trajectories_pb2 as tpb
from trainsvc_api.v1 import trajectories_pb2_grpc as tpb_grpc

Unary = Callable[[Callable[..., Any], Message, float | None], Any]
AsyncUnary = Callable[[Callable[..., Any], Message, float | None], Awaitable[Any]]


def list_windows_request(
    page_size: int = 0, page_token: str = "", bucket_seconds: int = 0
) -> tpb.ListWindowsRequest:
    """The request of one page of windows (0s mean the service's defaults)."""
    return tpb.ListWindowsRequest(
        page_size=page_size, page_token=page_token, bucket_seconds=bucket_seconds
    )


class TrajectoriesApi:
    """Windows of the service's trajectory store with their data quality (`Client.trajectories`).

    The service needs ``--trajectory-db``; without it calls raise
    `FailedPreconditionError`.
    """

    def __init__(self, channel: grpc.Channel, unary: Unary) -> None:
        self._stub = tpb_grpc.TrajectoryServiceStub(channel)
        self._unary = unary

    def list_windows_page(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        bucket_seconds: int = 0,
        timeout: float | None = None,
    ) -> tpb.ListWindowsResponse:
        """One page of windows (newest first), with trajectories collected per bucket."""
        request = list_windows_request(page_size, page_token, bucket_seconds)
        result: tpb.ListWindowsResponse = self._unary(self._stub.ListWindows, request, timeout)
        return result

    def list_windows(self, *, page_size: int = 100) -> Iterator[tpb.TrajectoryWindow]:
        """Every window (newest first), following page tokens."""
        token = ""
        while True:
            page = self.list_windows_page(page_size=page_size, page_token=token)
            yield from page.windows
            token = page.next_page_token
            if not token:
                return


class AsyncTrajectoriesApi:
    """`TrajectoriesApi` for asyncio (`AsyncClient.trajectories`)."""

    def __init__(self, channel: grpc.aio.Channel, unary: AsyncUnary) -> None:
        self._stub = tpb_grpc.TrajectoryServiceStub(channel)
        self._unary = unary

    async def list_windows_page(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        bucket_seconds: int = 0,
        timeout: float | None = None,
    ) -> tpb.ListWindowsResponse:
        """One page of windows (newest first), with trajectories collected per bucket."""
        request = list_windows_request(page_size, page_token, bucket_seconds)
        result: tpb.ListWindowsResponse = await self._unary(
            self._stub.ListWindows, request, timeout
        )
        return result

    async def list_windows(self, *, page_size: int = 100) -> AsyncIterator[tpb.TrajectoryWindow]:
        """Every window (newest first), following page tokens."""
        token = ""
        while True:
            page = await self.list_windows_page(page_size=page_size, page_token=token)
            for window in page.windows:
                yield window
            token = page.next_page_token
            if not token:
                return


__all__ = ["AsyncTrajectoriesApi", "TrajectoriesApi", "list_windows_request"]
