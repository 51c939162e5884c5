"""How to reach a trainsvc service: one owner for the sync and the asyncio client.

Channel options (retries, message size, reconnect backoff, keepalive), TLS
credentials, the bearer token and resource names are built here, so that
`trainsvc_client.connect` and `trainsvc_client.aio.connect` cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar

import grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
"""Where `trainsvc serve` listens by default."""
DEFAULT_TIMEOUT_S = 30.0
"""Deadline of unary calls unless the caller passes another one."""
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
C = TypeVar("C")

SERVICE = "trainsvc.v1.TrainService"
RETRY_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": SERVICE}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "3s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)
"""gRPC's own retry policy: unary calls that fail UNAVAILABLE are tried up to 5 times."""


def run_name(run: str) -> str:
    """Return the resource name of a run given as "runs/ID" or just "ID"."""
    return run if run.startswith("runs/") else f"runs/{run}"


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token`` (none without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


@dataclass(frozen=True)
class ServiceConfig:
    """Where and how to reach trainsvc.

    Attributes:
        address: "host:port".
        token: bearer token, sent with every call (required when the service listens
            beyond loopback).
        tls: connect with TLS (also implied by ``root_certificates``).
        root_certificates: PEM of a private CA or a self-signed certificate; else the
            system roots are trusted.
        server_name: override of the name checked against the certificate.
        timeout: default deadline of unary calls, in seconds.
        keepalive_s: ping an idle connection this often (None: gRPC's default, off),
            so that a long-lived client notices a vanished service within seconds.
        max_reconnect_backoff_s: longest wait between reconnection attempts (None:
            gRPC's default, up to two minutes); a short one makes a client that stays
            connected for days pick up a restarted service within this time.
    """

    address: str = DEFAULT_ADDRESS
    token: str | None = None
    tls: bool = False
    root_certificates: bytes | None = None
    server_name: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    keepalive_s: float | None = None
    max_reconnect_backoff_s: float | None = None

    @property
    def secure(self) -> bool:
        """Whether the channel uses TLS."""
        return self.tls or self.root_certificates is not None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata: the bearer token, if any."""
        return bearer(self.token)

    def options(self) -> list[tuple[str, Any]]:
        """The channel options."""
        options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", RETRY_CONFIG),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        if self.max_reconnect_backoff_s is not None:
            longest = int(self.max_reconnect_backoff_s * 1000)
            first = min(200, longest)
            options += [
                ("grpc.initial_reconnect_backoff_ms", first),
                ("grpc.min_reconnect_backoff_ms", first),
                ("grpc.max_reconnect_backoff_ms", longest),
            ]
        if self.keepalive_s is not None:
            period = int(self.keepalive_s * 1000)
            options += [
                ("grpc.keepalive_time_ms", period),
                ("grpc.keepalive_timeout_ms", max(1000, period // 2)),
            ]
        if self.secure and self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return options

    def open_channel(self, secure: Callable[..., C], insecure: Callable[..., C]) -> C:
        """Open the channel with gRPC's ``secure_channel`` / ``insecure_channel`` (sync or aio)."""
        if self.secure:
            creds = grpc.ssl_channel_credentials(root_certificates=self.root_certificates)
            return secure(self.address, creds, options=self.options())
        return insecure(self.address, options=self.options())


class ConnectOptions(TypedDict, total=False):
    """The options of `connect` besides address and token (`ServiceConfig` documents each)."""

    tls: bool
    root_certificates: bytes | None
    server_name: str | None
    timeout: float


class BaseClient:
    """What the sync and the asyncio client share: the token's metadata and the deadline."""

    def __init__(self, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._metadata = bearer(token)
        self.timeout = timeout
