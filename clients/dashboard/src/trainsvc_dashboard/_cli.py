"""`trainsvc-dashboard`: run the bridge and serve the page."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import logging
import os
import signal
import sys
from pathlib import Path

from trainsvc_client import ServiceConfig

from trainsvc_dashboard._server import DEFAULT_HOST, DEFAULT_PORT, Bridge, LoginRequiredError


def _host_port(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{what}: expected HOST:PORT, got {value!r}")
    return host.strip("[]") or DEFAULT_HOST, int(port)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trainsvc-dashboard",
        description="Serve the trainsvc live dashboard: the web page at / and its WebSocket at /ws, "
        "bridged to a trainsvc service over gRPC.",
    )
    p.add_argument(
        "--server",
        default=os.environ.get("TRAINSVC_SERVER", "127.0.0.1:50051"),
        help="trainsvc address HOST:PORT (env TRAINSVC_SERVER; default 127.0.0.1:50051)",
    )
    p.add_argument(
        "--service-token",
        default=os.environ.get("TRAINSVC_TOKEN"),
        help="bearer token for the service (env TRAINSVC_TOKEN); browsers never see it",
    )
    p.add_argument("--tls", action="store_true", help="connect to the service with TLS")
    p.add_argument("--ca-cert", type=Path, help="PEM file of the CA (or self-signed cert) to trust")
    p.add_argument("--server-name", help="name to check the service's certificate against")
    p.add_argument(
        "--listen",
        default=f"{DEFAULT_HOST}:{DEFAULT_PORT}",
        help=f"where to serve the page, HOST:PORT (default {DEFAULT_HOST}:{DEFAULT_PORT}; port 0 = any)",
    )
    p.add_argument(
        "--login-token",
        default=os.environ.get("TRAINSVC_DASHBOARD_TOKEN"),
        help="token browsers must give (env TRAINSVC_DASHBOARD_TOKEN); required beyond loopback",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name browsers may use to reach the page (repeatable); IP addresses, "
        "localhost and the --listen host always work, any other Host header gets 403 "
        "(a DNS-rebinding guard)",
    )
    p.add_argument("--json", action="store_true", help="print the page's address as one JSON line")
    p.add_argument("-v", "--verbose", action="store_true", help="log connection details")
    return p


async def _serve(bridge: Bridge, as_json: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await bridge.start()
    assert bridge.hub is not None
    if as_json:
        info = {
            "url": bridge.url,
            "server": bridge.service_config.address,
            "service": bridge.hub.status["state"],
        }
        print(json.dumps(info), flush=True)
    else:
        state = bridge.hub.status["state"]
        note = "connected" if state == "connected" else "not reachable yet; retrying every second"
        print(
            f"trainsvc dashboard: {bridge.url}  (service {bridge.service_config.address}: {note})",
            flush=True,
        )
    try:
        await stop.wait()
    finally:
        try:
            await asyncio.wait_for(bridge.close(), 15.0)
        except TimeoutError:
            logging.getLogger("trainsvc_dashboard").warning(
                "shutdown took over 15 s; exiting anyway"
            )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `trainsvc-dashboard`; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        host, port = _host_port(args.listen, "--listen")
        _host_port(args.server, "--server")
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        roots = args.ca_cert.read_bytes() if args.ca_cert else None
    except OSError as exc:
        print(f"error: --ca-cert: cannot read {args.ca_cert}: {exc.strerror}", file=sys.stderr)
        return 1
    service = ServiceConfig(
        address=args.server,
        token=args.service_token or None,
        tls=args.tls,
        root_certificates=roots,
        server_name=args.server_name,
    )
    try:
        bridge = Bridge(
            service,
            host=host,
            port=port,
            login_token=args.login_token,
            allowed_hosts=tuple(args.allowed_host),
        )
        asyncio.run(_serve(bridge, args.json))
    except LoginRequiredError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: --listen {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
