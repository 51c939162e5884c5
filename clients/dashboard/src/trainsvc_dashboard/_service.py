"""The bridge's gRPC connection to trainsvc (asyncio), holding the service token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio
from trainsvc_api.v1 import trainsvc_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class ServiceConfig:
    """Where and how to reach trainsvc; the same options as `trainsvc-cli`.

    Attributes:
        address: "host:port" of the service.
        token: bearer token, sent with every call (never given to browsers).
        tls: connect with TLS.
        root_certificates: PEM of a private CA or self-signed certificate.
        server_name: override of the name checked against the certificate.
    """

    address: str = "127.0.0.1:50051"
    token: str | None = None
    tls: bool = False
    root_certificates: bytes | None = None
    server_name: str | None = None


class ServiceLink:
    """An asyncio channel and stub to trainsvc.

    gRPC reconnects the channel by itself when the service comes back; the
    short reconnect backoff below makes that take well under a second.
    Must be created inside the running event loop.
    """

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
        ]
        if config.tls or config.root_certificates is not None:
            if config.server_name:
                options.append(("grpc.ssl_target_name_override", config.server_name))
            creds = grpc.ssl_channel_credentials(root_certificates=config.root_certificates)
            self.channel = aio.secure_channel(config.address, creds, options=options)
        else:
            self.channel = aio.insecure_channel(config.address, options=options)
        self.stub = pb_grpc.TrainServiceStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {config.token}"),) if config.token else ()
        )

    async def close(self) -> None:
        """Close the channel (cancels open streams)."""
        await self.channel.close(grace=None)


def error_json(err: BaseException) -> dict[str, str]:
    """A failed call as the page's `reply` error: the gRPC code name and the message."""
    if isinstance(err, aio.AioRpcError):
        return {"code": err.code().name, "message": err.details() or ""}
    return {"code": "INTERNAL", "message": str(err) or type(err).__name__}


def is_unavailable(err: BaseException) -> bool:
    """Whether a call failed because the service could not be reached."""
    return isinstance(err, aio.AioRpcError) and err.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAUTHENTICATED,
    )
