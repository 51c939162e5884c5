"""The bridge process: HTTP for the page, WebSocket `/ws` for the protocol."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import http
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from trainsvc_client import ServiceConfig, aio
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from trainsvc_dashboard._hub import PROTOCOL_VERSION, BridgeHub, BrowserSession
from trainsvc_dashboard._presets import PRESETS

log = logging.getLogger("trainsvc_dashboard")

STATIC_DIR = Path(__file__).parent / "static"
"""The built page (index.html, assets/), shipped inside the package."""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5173

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_allowed(header: str, listen_host: str, names: frozenset[str]) -> bool:
    """Whether a request's ``Host`` header names this bridge (a DNS-rebinding guard).

    A page on ``evil.example`` whose name later resolves to 127.0.0.1 reaches a
    loopback bridge with ``Host: evil.example:PORT`` (and a matching Origin), so the
    Host itself is checked, as development servers do. Allowed: IP literals (a
    rebinding needs a name), ``localhost`` and ``*.localhost``, the address the
    bridge listens on, and the names given with ``--allowed-host``.
    """
    hostname = urlsplit(f"//{header}").hostname if header else None
    if not hostname:
        return False
    hostname = hostname.rstrip(".").lower()
    try:
        ipaddress.ip_address(hostname)
        return True
    except ValueError:
        pass
    return (
        hostname == "localhost"
        or hostname.endswith(".localhost")
        or hostname == listen_host.lower()
        or hostname in names
    )


class LoginRequiredError(ValueError):
    """The bridge would listen beyond loopback without a login token."""


def _response(status: http.HTTPStatus, body: bytes, content_type: str, **extra: str) -> Response:
    headers = Headers(
        {
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            **extra,
        }
    )
    return Response(status.value, status.phrase, headers, body)


def _json_response(data: Any, status: http.HTTPStatus = http.HTTPStatus.OK) -> Response:
    return _response(status, json.dumps(data).encode(), "application/json")


def _text_response(status: http.HTTPStatus, text: str) -> Response:
    return _response(status, text.encode(), "text/plain; charset=utf-8")


BRIDGE_KEEPALIVE_S = 10.0
BRIDGE_MAX_RECONNECT_BACKOFF_S = 2.0


def bridge_channel(config: ServiceConfig) -> ServiceConfig:
    """The bridge's channel: kept alive and quick to reconnect (unless `config` says otherwise).

    The bridge stays connected for days; pings notice a vanished service within seconds
    and a short reconnect backoff picks up a restarted one well under a second later.
    """
    return dataclasses.replace(
        config,
        keepalive_s=config.keepalive_s or BRIDGE_KEEPALIVE_S,
        max_reconnect_backoff_s=config.max_reconnect_backoff_s or BRIDGE_MAX_RECONNECT_BACKOFF_S,
    )


class Bridge:
    """The dashboard bridge: serves the page and fans the service's frames out.

    Args:
        service: how to reach trainsvc (address, token, TLS).
        host: address to listen on; loopback unless told otherwise.
        port: port to listen on (0 picks a free one; see `port` after `start`).
        login_token: the token browsers must present; required when `host`
            is not a loopback address.
        static_dir: the built page to serve (default: the packaged one).
        allowed_hosts: host names (besides IP literals, ``localhost`` and ``host``) that
            requests may carry in their ``Host`` header; others get 403.

    Raises:
        LoginRequiredError: `host` is not loopback and `login_token` is empty.
    """

    def __init__(
        self,
        service: ServiceConfig,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        login_token: str | None = None,
        static_dir: Path = STATIC_DIR,
        allowed_hosts: tuple[str, ...] = (),
    ) -> None:
        if not is_loopback(host) and not login_token:
            raise LoginRequiredError(
                f"--login-token: required when --listen is not a loopback address (got {host!r})"
            )
        self.service_config = service
        self.host = host
        self.port = port
        self.login_token = login_token or None
        self.allowed_hosts = frozenset(h.rstrip(".").lower() for h in allowed_hosts)
        self.static_dir = static_dir.resolve()
        self.hub: BridgeHub | None = None
        self._server: Server | None = None
        self._presets = [p.json() for p in PRESETS.values()]

    @property
    def url(self) -> str:
        """The page's address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        """Connect to the service, start the hub and listen."""
        self.hub = BridgeHub(
            aio.connect_config(bridge_channel(self.service_config)), self.service_config.address
        )
        await self.hub.start()
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,  # per-client compression would cost CPU per client per frame
            max_size=64 * 1024,
            server_header="trainsvc-dashboard",
            logger=logging.getLogger("trainsvc_dashboard.ws"),
        )
        sockets = list(self._server.sockets)
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening, close every client and the service connection.

        Each stage gets a few seconds; one that stalls is logged and skipped,
        so that a stuck peer can never keep the process from exiting.
        """
        stages: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self._server is not None:
            server = self._server
            server.close()
            stages.append(("closing WebSocket connections", server.wait_closed))
        if self.hub is not None:
            hub = self.hub
            stages.append(("stopping the hub", hub.close))
            stages.append(("closing the gRPC channel", hub.service.close))
        for what, stage in stages:
            try:
                await asyncio.wait_for(stage(), 5.0)
            except TimeoutError:
                log.warning("shutdown: %s took over 5 s; skipped", what)

    # ------------------------------------------------------------ HTTP

    def _authorized(self, request: Request) -> bool:
        if self.login_token is None:
            return True
        query = parse_qs(urlsplit(request.path).query)
        given = (query.get("token") or [""])[0]
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth.removeprefix("Bearer ")
        return hmac.compare_digest(given.encode(), self.login_token.encode())

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        hosts = request.headers.get_all("Host")
        host = hosts[0] if len(hosts) == 1 else ""  # none, or two: refused
        if not host_allowed(host, self.host, self.allowed_hosts):
            return _text_response(
                http.HTTPStatus.FORBIDDEN,
                f"Host {host[:100]!r} is not this dashboard's; add it with --allowed-host\n",
            )
        if path == "/ws":
            if not self._authorized(request):
                return _text_response(
                    http.HTTPStatus.UNAUTHORIZED, "login token missing or wrong\n"
                )
            origin = request.headers.get("Origin")
            if origin is not None and urlsplit(origin).netloc != request.headers.get("Host", ""):
                return _text_response(http.HTTPStatus.FORBIDDEN, "cross-origin WebSocket refused\n")
            return None
        if path == "/api/info":
            return _json_response(
                {
                    "protocol": PROTOCOL_VERSION,
                    "auth_required": self.login_token is not None,
                    "service": self.service_config.address,
                }
            )
        if path == "/api/stats":
            if not self._authorized(request):
                return _text_response(
                    http.HTTPStatus.UNAUTHORIZED, "login token missing or wrong\n"
                )
            return _json_response(self.hub.stats() if self.hub else {})
        if path == "/healthz":
            return _text_response(http.HTTPStatus.OK, "ok\n")
        return self._static(path)

    def _static(self, path: str) -> Response:
        rel = "index.html" if path in ("", "/") else path.lstrip("/")
        target = (self.static_dir / rel).resolve()
        if not target.is_relative_to(self.static_dir) or not target.is_file():
            return _text_response(http.HTTPStatus.NOT_FOUND, f"not found: {path}\n")
        content_type = _TYPES.get(target.suffix, "application/octet-stream")
        return _response(http.HTTPStatus.OK, target.read_bytes(), content_type)

    # ------------------------------------------------------------ WebSocket

    async def _handle(self, ws: ServerConnection) -> None:
        hub = self.hub
        assert hub is not None
        client = BrowserSession(ws)
        hub.add(client, self._presets)
        writer = asyncio.create_task(client.write_loop())
        reader = asyncio.create_task(self._read(hub, client, ws))
        try:
            await asyncio.wait([writer, reader], return_when=asyncio.FIRST_COMPLETED)
        finally:
            hub.remove(client)
            for task in (writer, reader):
                task.cancel()
            await asyncio.wait([writer, reader], timeout=5.0)

    @staticmethod
    async def _read(hub: BridgeHub, client: BrowserSession, ws: ServerConnection) -> None:
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    client.push(
                        {"type": "error", "message": "message: JSON text expected, got binary"}
                    )
                    continue
                await hub.handle(client, message)
        except ConnectionClosed:
            return
