"""Server lifecycle: build the gRPC server, security, health, reflection, metrics, signals.

Kept apart from the RPC methods (`_servicer`) and the run logic (`_manager`).
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from trainsvc_api.v1 import models_pb2 as mpb
from trainsvc_api.v1 import models_pb2_grpc as mpb_grpc
from trainsvc_api.v1 import trainsvc_pb2 as pb
from trainsvc_api.v1 import trajectories_pb2 as tpb
from trainsvc_api.v1 import trajectories_pb2_grpc as tpb_grpc

from trainsvc import _convert as conv
from trainsvc._auth import TokenAuthInterceptor
from trainsvc._backends import WorkerBackend
from trainsvc._control_plane import ControlPlane, StandbyGate
from trainsvc._cpus import available_cpus, format_cpu_list, pin_process, pin_this_process
from trainsvc._fanout import Hub, Notifier
from trainsvc._lease import DEFAULT_TTL_S
from trainsvc._manager import RunManager
from trainsvc._metric_history import RunMetricHistories
from trainsvc._metrics import Metrics, start_metrics_server
from trainsvc._model_stack import AUTOMATION_DIR, EndpointUnavailableError, ModelStack
from trainsvc._paths import InputRoots
from trainsvc._registry import Registry
from trainsvc._registry_db import RegistryConfigError, parse_location
from trainsvc._remote_store import RemoteStore
from trainsvc._servicer import TrainServicer, add_to_server
from trainsvc._trajectories_servicer import TrajectoryServicer
from trainsvc.kinds import FrameData

log = logging.getLogger("trainsvc.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TrainService"].full_name
MODEL_SERVICE_NAME = mpb.DESCRIPTOR.services_by_name["ModelService"].full_name
TRAJECTORY_SERVICE_NAME = tpb.DESCRIPTOR.services_by_name["TrajectoryService"].full_name


class ConfigurationError(Exception):
    """The server's options are unsafe or inconsistent (e.g. no token beyond loopback)."""


DEFAULT_WORKER_NICE = 5
"""Run workers this much nicer than the service: when training saturates the CPUs, the
service (control RPCs, health checks, frame fan-out) is scheduled first."""
REGISTRY_WATCH_S = 1.0
"""How often health checks that the registry can write."""
STREAMS_END_TIMEOUT_S = 15.0
"""At shutdown, how long following event streams get to send the runs' final events and
return before the server's stop cancels them."""


GIL_SWITCH_INTERVAL_S = 0.001
"""`sys.setswitchinterval` of the service process (Python's default is 0.005)."""


@dataclass
class ServerOptions:
    """Options of `trainsvc serve` (see its --help)."""

    listen: str = "127.0.0.1:50051"
    data_dir: Path = Path(".trainsvc")
    token: str | None = None
    insecure: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_listen: str = ""
    auto_resume: bool = False
    max_streams: int = 512
    shutdown_timeout: float = 60.0
    worker_nice: int = DEFAULT_WORKER_NICE
    worker_cpus: frozenset[int] | None = None
    """CPUs run workers are pinned to (the service keeps the others); None: no pinning."""
    input_dirs: tuple[Path, ...] = ()
    """Directories runs may read inputs from (models, data); empty: the working directory."""
    openai_listen: str = ""
    """HOST:PORT of the OpenAI-compatible endpoint for deployed models; empty: none."""
    trajectory_db: str = ""
    """The trajectory store: the endpoint records calls that carry X-Trajectory-Id into it
    and the model automation trains on it; empty: neither."""
    automation_poll_s: float = 5.0
    """How often the model automation checks schedules and cycles (with trajectory_db)."""
    models_storage: str = ""
    """Where model artifacts live (a directory or an fsspec URL); empty: <data-dir>/artifacts."""
    token_principal: str = "admin"
    """The principal that model events record for callers with the service's token."""
    registry: str = ""
    """The run registry: empty (<data-dir>/registry.sqlite3), a SQLite path or URL, or
    postgresql://... shared by several instances, one of which holds its lease."""
    registry_lease_ttl: float = DEFAULT_TTL_S
    """Seconds a shared registry's lease lasts without renewal (a standby's takeover delay)."""
    backend: str = "local"
    """Where run workers start: ``local`` (processes here) or ``ray`` (actors on a Ray cluster)."""
    ray_address: str = ""
    """``--backend ray``: the Ray cluster's head ``HOST:PORT`` (empty: ``$RAY_ADDRESS``)."""
    ray_listen: str = ""
    """``--backend ray``: ``HOST:PORT`` the workers connect back to (empty: Ray's address
    for this machine, a free port)."""
    data_url: str = ""
    """``--data-dir URL`` (``s3://bucket/prefix``): runs' checkpoints live there, and
    ``data_dir`` is the local state directory (``--state-dir``); empty: all in ``data_dir``."""
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    """Options of the URL data directory's fsspec filesystem (``--storage-option``); never
    logged."""


def _worker_backend(opts: ServerOptions) -> WorkerBackend | None:
    """The backend ``--backend`` names; None for ``local`` (the manager's default).

    Raises:
        ConfigurationError: naming ``--backend`` or ``--ray-address``.
    """
    if opts.backend == "local":
        if opts.ray_listen:
            raise ConfigurationError("--ray-listen is for --backend ray")
        return None
    if opts.backend != "ray":
        raise ConfigurationError(f"--backend {opts.backend!r}: expected local or ray")
    try:
        from trainsvc._ray_backend import RayBackend, RayBackendError
    except ImportError as exc:
        raise ConfigurationError(
            f"--backend ray needs the ray package (install trainsvc[ray]): {exc}"
        ) from None
    address = opts.ray_address or os.environ.get("RAY_ADDRESS", "")
    if not address:
        raise ConfigurationError(
            "--backend ray needs --ray-address HOST:PORT of the Ray cluster's head (or RAY_ADDRESS)"
        )
    try:
        return RayBackend(address, opts.ray_listen)
    except RayBackendError as exc:
        raise ConfigurationError(str(exc)) from None


def _remote_store(opts: ServerOptions) -> RemoteStore | None:
    """The URL data directory's store, once it answers; None for a local data directory.

    Raises:
        ConfigurationError: naming ``--data-dir`` (unreachable endpoint, credentials
            refused, missing bucket, fsspec/s3fs missing), never a secret.
    """
    if not opts.data_url:
        return None
    from trainsvc_checkpoint import CheckpointError

    store = RemoteStore.from_environment(opts.data_url, opts.storage_options)
    try:
        store.check()
    except CheckpointError as exc:  # RemoteStorageError, CheckpointNotFoundError
        raise ConfigurationError(f"--data-dir {store.describe()}: {exc}") from None
    except (TypeError, ValueError) as exc:  # an option the filesystem's client does not take
        raise ConfigurationError(
            f"--storage-option: refused by the filesystem of {store.describe()}: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    return store


def split_host_port(address: str) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port"."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigurationError(f"--listen: expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TrainsvcServer:
    """The trainsvc service: start it, let it run, stop it (checkpointing active runs)."""

    def __init__(self, options: ServerOptions) -> None:
        host, _ = split_host_port(options.listen)
        if options.token is None and not is_loopback(host) and not options.insecure:
            raise ConfigurationError(
                f"--listen {options.listen} is beyond loopback: give a token (--token-file or "
                "TRAINSVC_TOKEN) or pass --insecure explicitly"
            )
        if options.metrics_listen:
            mhost, _ = split_host_port(options.metrics_listen)
            if options.token is None and not is_loopback(mhost) and not options.insecure:
                raise ConfigurationError(
                    f"--metrics-listen {options.metrics_listen} is beyond loopback: give a token "
                    "(--token-file or TRAINSVC_TOKEN; scrapers then send it as a bearer token) "
                    "or pass --insecure explicitly"
                )
        if options.openai_listen:
            ohost, _ = split_host_port(options.openai_listen)
            if options.token is None and not is_loopback(ohost) and not options.insecure:
                raise ConfigurationError(
                    f"--openai-listen {options.openai_listen} is beyond loopback: give a token "
                    "(--token-file or TRAINSVC_TOKEN; clients send it as their api_key) or pass "
                    "--insecure explicitly"
                )
        if (options.tls_cert is None) != (options.tls_key is None):
            raise ConfigurationError("--tls-cert and --tls-key go together")
        self.options = options
        self.port = 0
        self.metrics_port = 0
        self._server: grpc.aio.Server | None = None
        self._health: Any = None
        self.worker_backend: WorkerBackend | None = None
        self.remote: RemoteStore | None = None
        self._registry_watch: asyncio.Task[None] | None = None
        self._servicer: TrainServicer | None = None
        self._metrics_http: Any = None

    async def start(self) -> None:
        """Open the registry, recover runs, and start listening."""
        opts = self.options
        self._pin_away_from_workers()
        # Event streams read the registry in these threads; control calls, which wait for a
        # worker, have their own (`_servicer.CONTROL_THREADS`).
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=64, thread_name_prefix="rpc")
        )
        opts.data_dir.mkdir(parents=True, exist_ok=True)
        self.remote = _remote_store(opts)
        self.worker_backend = _worker_backend(opts)
        try:
            self.registry = Registry(parse_location(opts.registry, opts.data_dir))
        except RegistryConfigError as exc:
            raise ConfigurationError(f"--registry: {exc}") from None
        self.metrics = Metrics()
        self.hub: Hub[bytes] = Hub(max_subscribers=1 << 30)
        self.notifier = Notifier()
        sequences: dict[str, int] = {}
        seq_lock = threading.Lock()
        histories = RunMetricHistories(lambda run_id: self.manager.run_dir(run_id))

        def frame_sink(run_id: str, frame: FrameData) -> None:
            with seq_lock:
                sequences[run_id] = sequences.get(run_id, 0) + 1
                seq = sequences[run_id]
            histories.add(run_id, frame.step, frame.metrics)
            # Serialized once here; every subscriber is sent these same bytes.
            self.hub.publish(run_id, conv.frame_to_proto(run_id, frame, seq).SerializeToString())

        def run_ended(run_id: str) -> None:
            histories.end(run_id)
            self.hub.close_topic(run_id)

        self.manager = RunManager(
            self.registry,
            opts.data_dir,
            self.metrics,
            frame_sink=frame_sink,
            on_event=lambda _e: self.notifier.notify(),
            on_run_end=run_ended,
            worker_nice=opts.worker_nice,
            worker_cpus=opts.worker_cpus,
            worker_backend=self.worker_backend,
            resume_lost_workers=opts.auto_resume,
            remote_checkpoints=self.remote,
            # the automation's exports and fetched versions are inputs of its grpo runs
            input_roots=InputRoots.of(
                (*(opts.input_dirs or (Path.cwd(),)), opts.data_dir / AUTOMATION_DIR)
            ),
        )
        self.control = ControlPlane(
            self.registry,
            self.manager,
            auto_resume=opts.auto_resume,
            name=opts.listen,
            ttl_s=opts.registry_lease_ttl,
        )
        interceptors: list[grpc.aio.ServerInterceptor] = (
            [TokenAuthInterceptor(opts.token)] if opts.token else []
        )
        if self.registry.shared:  # a standby refuses calls until it holds the lease
            interceptors.append(StandbyGate(self.control))
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                # a second service on a port in use must fail, not silently share it
                ("grpc.so_reuseport", 0),
            ],
        )
        servicer = TrainServicer(
            self.manager,
            self.hub,
            self.notifier,
            self.metrics,
            max_streams=opts.max_streams,
            histories=histories,
        )
        self._servicer = servicer
        add_to_server(servicer, server)
        self.models = ModelStack.open(
            opts.data_dir,
            opts.models_storage,
            self.manager.input_roots,
            self.metrics,
            token=opts.token,
            principal=opts.token_principal,
            run_checkpoints=self.manager.list_checkpoints,
            remote=self.remote,
        )
        if opts.trajectory_db:
            self.models.start_automation(
                self.manager, opts.trajectory_db, opts.data_dir / AUTOMATION_DIR,
                opts.automation_poll_s, is_active=lambda: self.control.active,
            )  # fmt: skip
        mpb_grpc.add_ModelServiceServicer_to_server(self.models.servicer, server)
        # Without --trajectory-db its calls say so (FAILED_PRECONDITION).
        self.trajectories = TrajectoryServicer(opts.trajectory_db, self.metrics)
        tpb_grpc.add_TrajectoryServiceServicer_to_server(self.trajectories, server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                MODEL_SERVICE_NAME,
                TRAJECTORY_SERVICE_NAME,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        try:
            if opts.tls_cert is not None and opts.tls_key is not None:
                creds = grpc.ssl_server_credentials(
                    [(opts.tls_key.read_bytes(), opts.tls_cert.read_bytes())]
                )
                self.port = server.add_secure_port(opts.listen, creds)
            else:
                self.port = server.add_insecure_port(opts.listen)
        except RuntimeError:  # recent grpcio raises on a failed bind; older versions return 0
            self.port = 0
        if self.port == 0:
            raise ConfigurationError(
                f"--listen: cannot bind {opts.listen} (in use by another process?)"
            )
        if opts.openai_listen:
            try:
                self.models.start_endpoint(opts.openai_listen, opts.trajectory_db)
            except (EndpointUnavailableError, OSError) as exc:
                raise ConfigurationError(f"--openai-listen {opts.openai_listen}: {exc}") from None
        recovered = self.control.start()  # a shared registry: once the lease is won
        await server.start()
        # Everything imported and built so far lives as long as the service: keep it out of
        # the garbage collector's full collections, which otherwise scan it all and stall the
        # event loop (hundreds of ms measured on a loaded machine) in the middle of RPCs.
        gc.collect()  # cycles left from startup would otherwise be kept for good
        gc.freeze()
        # The event loop shares the GIL with the worker reader threads (which unpickle and
        # serialize every frame): a shorter switch interval hands it back sooner, so an RPC
        # that arrives while a reader holds the GIL waits about 1 ms for it, not 5.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self._server = server
        first = (
            health_pb2.HealthCheckResponse.SERVING
            if self.control.active
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self._health.set(name, first)
        self._registry_watch = asyncio.get_running_loop().create_task(self._watch_registry())
        if opts.metrics_listen:
            mhost, mport = split_host_port(opts.metrics_listen)
            try:
                self._metrics_http, _thread = start_metrics_server(
                    mhost, mport, self.metrics.registry, opts.token
                )
                self.metrics_port = self._metrics_http.server_port
            except OSError as exc:
                log.warning("metrics endpoint %s not started: %s", opts.metrics_listen, exc)
        log.info(
            "trainsvc listening",
            extra={
                "listen": opts.listen,
                "port": self.port,
                "tls": opts.tls_cert is not None,
                "auth": bool(opts.token),
                "data_dir": self.remote.describe() if self.remote else str(opts.data_dir),
                "state_dir": str(opts.data_dir),
                "metrics_port": self.metrics_port,
                "interrupted_runs": recovered,
                "input_dirs": self.manager.input_roots.describe(),
                "openai_endpoint": self.models.endpoint_url,
                "registry": self.registry.describe(),
                "role": "active" if self.control.active else "standby",
            },
        )

    async def _watch_registry(self) -> None:
        """Health is NOT_SERVING while the registry cannot write (say, the disk is full),
        and on a standby until it holds the shared registry's lease.

        Checked once a second; while writes fail, a tiny probe write finds out when they
        work again, and health goes back to SERVING.
        """
        serving = self.control.active
        while True:
            await asyncio.sleep(REGISTRY_WATCH_S)
            if not self.control.active:
                ok = False
            else:
                ok = self.registry.write_error is None or await asyncio.to_thread(
                    self.registry.probe_write
                )
            if ok == serving:
                continue
            serving = ok
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ok
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", SERVICE_NAME):
                await self._health.set(name, status)
            if ok and self.registry.shared:
                log.warning("acting on the registry, and it writes: health SERVING")
            elif ok:
                log.warning("the registry writes again: health SERVING")
            elif not self.control.active:
                log.warning("a standby for the registry's lease: health NOT_SERVING")
            else:
                log.error(
                    "the registry cannot write: health NOT_SERVING",
                    extra={"reason": self.registry.write_error},
                )

    def _pin_away_from_workers(self) -> None:
        """With --worker-cpus, move the service's threads to the CPUs the workers do not use.

        Raises ConfigurationError when the workers could not run on their CPUs (a
        cpuset that excludes them), before any run is started.
        """
        workers = self.options.worker_cpus
        if not workers:
            return
        own = available_cpus()
        try:  # the same call each worker makes at start, tried here once
            pin_process(workers)
        except OSError as exc:
            raise ConfigurationError(
                f"--worker-cpus: cannot run on CPUs {format_cpu_list(workers)}: {exc.strerror}"
            ) from None
        # no CPU left: the service shares the workers' CPUs (their niceness still helps)
        service = (own - workers) or own
        pin_this_process(service)
        log.info(
            "cpu affinity",
            extra={
                "worker_cpus": format_cpu_list(workers),
                "service_cpus": format_cpu_list(service),
            },
        )

    async def wait(self) -> None:
        """Block until the server stops."""
        assert self._server is not None
        await self._server.wait_for_termination()

    async def stop(self) -> None:
        """Graceful stop: refuse new work, checkpoint active runs, close streams, exit."""
        log.info("shutting down: checkpointing active runs")
        if self._registry_watch is not None:
            self._registry_watch.cancel()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        await asyncio.to_thread(self.manager.shutdown, self.options.shutdown_timeout)
        if self.worker_backend is not None:
            self.worker_backend.close()
        await asyncio.to_thread(self.control.stop)  # a standby may take over now
        if self._servicer is not None:
            # The runs' final events are sent first; then the streams return.
            await self._servicer.end_streams(timeout=STREAMS_END_TIMEOUT_S)
        if self._server is not None:
            await self._server.stop(grace=2.0)
        if self._servicer is not None:
            self._servicer.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        self.models.close()
        self.trajectories.close()
        self.registry.close()
        log.info("trainsvc stopped")


async def _serve(options: ServerOptions, on_started: Any = None) -> None:
    server = TrainsvcServer(options)
    await server.start()
    if on_started is not None:
        await on_started(server)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.ensure_future(server.wait())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    await server.stop()
    waiter.cancel()
    stopper.cancel()


def serve(options: ServerOptions, on_started: Any = None) -> None:
    """Run the service until SIGTERM or SIGINT; then checkpoint active runs and exit."""
    asyncio.run(_serve(options, on_started))
