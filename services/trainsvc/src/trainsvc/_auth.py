"""Bearer-token authentication for every RPC except health checks."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


_DENIED = "missing or wrong bearer token"


async def _deny_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED)


async def _deny_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Require ``authorization: Bearer <token>``, compared in constant time."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("token: must not be empty")
        self._expected = f"Bearer {token}".encode()

    def allowed(self, metadata: Any) -> bool:
        """True when the call's metadata carries the right token."""
        got = b""
        for key, value in metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else bytes(value)
        return hmac.compare_digest(got, self._expected)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Pass authorised calls on; answer the others UNAUTHENTICATED."""
        method = handler_call_details.method or ""
        if method.startswith(_OPEN_PREFIXES) or self.allowed(
            handler_call_details.invocation_metadata
        ):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.response_streaming:
            if handler.request_streaming:
                return grpc.stream_stream_rpc_method_handler(_deny_stream)
            return grpc.unary_stream_rpc_method_handler(_deny_stream)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(_deny_unary)
        return grpc.unary_unary_rpc_method_handler(_deny_unary)
