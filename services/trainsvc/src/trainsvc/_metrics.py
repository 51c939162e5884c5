"""Prometheus metrics of the service (served by `trainsvc serve --metrics-listen`)."""

from __future__ import annotations

import hmac
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from trainsvc._domain import State


class _RunsByState(Collector):
    def __init__(self, counts: Callable[[], dict[State, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("trainsvc_runs", "Runs by state.", labels=["state"])
        counts = self._counts()
        for state in State:
            family.add_metric([state.value], counts.get(state, 0))
        yield family


class _FrameCounts(Collector):
    """Frame counters kept as plain integers by the fan-out (no lock per frame), read at scrape."""

    def __init__(self, sent: Callable[[], int], dropped: Callable[[], int]) -> None:
        self._sent = sent
        self._dropped = dropped

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "trainsvc_frames_sent", "Frames sent to StreamFrames subscribers.", value=self._sent()
        )
        yield CounterMetricFamily(
            "trainsvc_frames_dropped",
            "Frames a subscriber skipped (a newer one replaced it, or its rate limit).",
            value=self._dropped(),
        )


class Metrics:
    """The service's metrics, in their own registry (so tests can build many services)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.steps_per_second = Gauge(
            "trainsvc_run_steps_per_second",
            "Training rate of each active run.",
            ["run"],
            registry=r,
        )
        self.run_step = Gauge(
            "trainsvc_run_step", "Latest step of each active run.", ["run"], registry=r
        )
        self.streams = Gauge(
            "trainsvc_active_streams", "Open StreamFrames/StreamEvents calls.", registry=r
        )
        self.checkpoint_seconds = Histogram(
            "trainsvc_checkpoint_save_seconds",
            "Duration of checkpoint saves requested by the service (pause, stop, SaveCheckpoint).",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "trainsvc_rpc_seconds",
            "Latency of unary RPCs.",
            ["method", "code"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=r,
        )
        self.worker_restarts = Counter(
            "trainsvc_worker_restarts_total",
            "Worker processes restarted after a crash.",
            registry=r,
        )
        self.automation_decisions = Counter(
            "trainsvc_automation_decisions_total",
            "Decisions of the model automation (skip, train, promote, rollback, ...).",
            ["model", "action"],
            registry=r,
        )
        self.automation_training_failures = Counter(
            "trainsvc_automation_training_failures_total",
            "Automation cycles whose grpo run, registration or evaluation failed.",
            ["model"],
            registry=r,
        )
        self.automation_regressions = Counter(
            "trainsvc_automation_regressions_total",
            "Promoted versions rolled back because their live reward regressed.",
            ["model"],
            registry=r,
        )
        self.trajectory_collection_rate = Gauge(
            "trainsvc_trajectory_collection_rate_per_hour",
            "Complete trajectories recorded in the last hour (as of the automation's last check).",
            ["model"],
            registry=r,
        )
        self.automation_live_reward = Gauge(
            "trainsvc_automation_live_reward",
            "Mean live reward per version during a soak.",
            ["model", "version"],
            registry=r,
        )

    def watch_frames(self, sent: Callable[[], int], dropped: Callable[[], int]) -> None:
        """Export `trainsvc_frames_sent_total` and `trainsvc_frames_dropped_total` from counts."""
        self.registry.register(_FrameCounts(sent, dropped))

    def watch_states(self, counts: Callable[[], dict[State, int]]) -> None:
        """Export `trainsvc_runs{state=...}` from `counts()` at each scrape."""
        self.registry.register(_RunsByState(counts))


def start_metrics_server(
    host: str, port: int, registry: CollectorRegistry, token: str | None
) -> tuple[Any, threading.Thread]:
    """Serve ``registry`` at ``http://host:port/metrics`` on a daemon thread.

    With ``token``, every request needs ``Authorization: Bearer <token>`` (compared in
    constant time), like the gRPC port; others get 401.

    Returns:
        The HTTP server (``server_port``, ``shutdown()``) and its thread.
    """
    if token is None:
        server, thread = start_http_server(port, host, registry=registry)
        return server, thread
    app = make_wsgi_app(registry)
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        got = str(environ.get("HTTP_AUTHORIZATION", "")).encode("latin-1", "replace")
        if not hmac.compare_digest(got, expected):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="trainsvc"')],
            )
            return [b"missing or wrong bearer token\n"]
        return app(environ, start_response)

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """No access log on stderr."""

    httpd = make_server(host, port, guarded, Server, handler_class=QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return httpd, thread
