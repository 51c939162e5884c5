"""`trainsvc serve`: the service's command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from trainsvc._cpus import affinity_supported, format_cpu_list, parse_cpu_list
from trainsvc._lease import DEFAULT_TTL_S
from trainsvc._remote_store import default_state_dir, is_url
from trainsvc._server import DEFAULT_WORKER_NICE, ConfigurationError, ServerOptions, serve

TOKEN_ENV = "TRAINSVC_TOKEN"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainsvc", description="The trainsvc training service.")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="Run the gRPC service.", description="Run the gRPC service.")
    s.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT (default %(default)s)")
    s.add_argument(
        "--data-dir",
        default=".trainsvc",
        metavar="DIR|URL",
        help="registry and checkpoints (default ./.trainsvc/); or an fsspec URL such as "
        "s3://bucket/prefix (needs trainsvc[s3]): runs' checkpoints then live there, under "
        "runs/<id>/checkpoints/, so a run resumes on any machine that reaches it, and the "
        "rest stays in --state-dir (see docs/scaling-out.md)",
    )
    s.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="with a URL --data-dir: the local directory for the SQLite registry (unless "
        "--registry), the model registry, artifacts and each run's checkpoint staging "
        "(default ~/.cache/trainsvc/<hash of the URL>)",
    )
    s.add_argument(
        "--storage-option",
        type=_storage_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of a URL --data-dir's fsspec filesystem, repeatable (s3fs: "
        "endpoint_url=http://host:9000, profile=...; a JSON value is parsed: "
        'client_kwargs={"region_name":"eu-west-1"}); credentials are better left to AWS_ACCESS_KEY_ID / '
        "AWS_SECRET_ACCESS_KEY or ~/.aws; never logged",
    )
    s.add_argument(
        "--token-file",
        type=Path,
        help=f"file holding the bearer token (else ${TOKEN_ENV}); required beyond loopback",
    )
    s.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening beyond loopback without a token (not recommended)",
    )
    s.add_argument("--tls-cert", type=Path, help="PEM certificate chain (with --tls-key)")
    s.add_argument("--tls-key", type=Path, help="PEM private key (with --tls-cert)")
    s.add_argument(
        "--metrics-listen",
        default="127.0.0.1:9464",
        help="HOST:PORT of the Prometheus /metrics endpoint ('' = off; default %(default)s)",
    )
    s.add_argument(
        "--auto-resume",
        action="store_true",
        help="resume runs that were active when the service last stopped",
    )
    s.add_argument(
        "--max-streams", type=int, default=512, help="concurrent streams (default %(default)s)"
    )
    s.add_argument(
        "--shutdown-timeout",
        type=float,
        default=60.0,
        help="seconds to checkpoint active runs on SIGTERM (default %(default)s)",
    )
    s.add_argument(
        "--worker-nice",
        type=_niceness,
        default=DEFAULT_WORKER_NICE,
        help="niceness added to run workers, 0-19, so the service stays responsive when "
        "training saturates the CPUs (default %(default)s)",
    )
    s.add_argument(
        "--worker-cpus",
        type=_cpu_list,
        metavar="LIST",
        help="pin run workers to these CPUs (e.g. 2-15; taskset -c syntax) and the service to "
        "the others, so that frame fan-out and RPCs never take CPU time from training "
        "(Linux; default: no pinning)",
    )
    s.add_argument(
        "--input-dir",
        type=_input_dir,
        action="append",
        default=[],
        metavar="DIR",
        help="a directory runs may read inputs from (a language model, training data); "
        "repeatable; paths elsewhere are refused (default: the working directory)",
    )
    s.add_argument(
        "--openai-listen",
        default="",
        metavar="HOST:PORT",
        help="serve the registry's deployed models on an OpenAI-compatible endpoint "
        "(/v1/chat/completions, /v1/models; needs trainsvc[serve]); default: off",
    )
    s.add_argument(
        "--trajectory-db",
        default="",
        metavar="URL",
        help="the trajectory store (sqlite:///path.db or postgresql://...): the endpoint "
        "records calls that carry X-Trajectory-Id into it, and model automation trains on "
        "it; default: none (calls are not recorded, automation is off)",
    )
    s.add_argument(
        "--automation-poll",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how often the model automation checks its schedules and cycles "
        "(needs --trajectory-db; default %(default)s)",
    )
    s.add_argument(
        "--models-storage",
        default="",
        metavar="URL",
        help="where model artifacts are stored: a directory or an fsspec URL such as "
        "s3://bucket/prefix (needs trainsvc[s3]); default: DATA_DIR/artifacts",
    )
    s.add_argument(
        "--token-principal",
        default="admin",
        help="the name model events record for callers with the token (default %(default)s)",
    )
    s.add_argument(
        "--registry",
        default="",
        metavar="URL",
        help="the run registry: a SQLite file (path or sqlite:///path.db; default "
        "DATA_DIR/registry.sqlite3) or postgresql://user:password@host:port/db, which several "
        "instances share: the one holding its lease acts, the others stand by and take over "
        "when it expires (needs trainsvc[postgresql]; see docs/scaling-out.md)",
    )
    s.add_argument(
        "--registry-lease-ttl",
        type=_positive_seconds,
        default=DEFAULT_TTL_S,
        metavar="SECONDS",
        help="how long a shared registry's lease lasts unrenewed: a standby takes over at "
        "most this long after the active instance stopped renewing (default %(default)s)",
    )
    s.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="where run workers start: local processes (default) or Ray actors placed by each "
        "run's resources on the nodes of an existing Ray cluster (needs trainsvc[ray]; "
        "see docs/scaling-out.md)",
    )
    s.add_argument(
        "--ray-address",
        default="",
        metavar="HOST:PORT",
        help="--backend ray: the Ray cluster's head node (default $RAY_ADDRESS)",
    )
    s.add_argument(
        "--ray-listen",
        default="",
        metavar="HOST:PORT",
        help="--backend ray: where the runs' workers on the Ray nodes connect back to; the "
        "service listens there (HOST 0.0.0.0: every interface, the workers told the address "
        "Ray has for this machine; PORT 0: a free port). Default: the address Ray has for "
        "this machine, a free port",
    )
    s.add_argument("--log-format", choices=("auto", "json", "text"), default="auto")
    s.add_argument("--log-level", default="INFO")
    s.add_argument(
        "--demo",
        action="store_true",
        help="create a demo emergence run at start when no run is active",
    )
    return parser


def _niceness(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 19:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 19, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 1.0 <= value <= 3600.0:
        raise argparse.ArgumentTypeError(f"expected seconds from 1 to 3600, got {text!r}")
    return value


def _cpu_list(text: str) -> frozenset[int]:
    if not affinity_supported():
        raise argparse.ArgumentTypeError("CPU pinning needs Linux (os.sched_setaffinity)")
    try:
        cpus = parse_cpu_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    machine = frozenset(range(os.cpu_count() or 1))
    if not cpus <= machine:
        raise argparse.ArgumentTypeError(
            f"CPU {format_cpu_list(cpus - machine)} does not exist here; "
            f"this machine has CPUs {format_cpu_list(machine)}"
        )
    return cpus


def _input_dir(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a directory")
    return path


def _storage_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError("expected KEY=VALUE (a non-empty KEY)")
    parsed: Any = value
    if value[:1] in "{[" or value in ("true", "false", "null") or _is_number(value):
        try:
            parsed = json.loads(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key}: not valid JSON") from None
    return key.strip(), parsed


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return bool(text)


def _data_location(args: argparse.Namespace) -> tuple[Path, str, dict[str, Any]]:
    """``(local data or state directory, data URL or "", storage options)`` from the flags.

    Raises:
        ConfigurationError: naming the flag that does not fit.
    """
    data: str = args.data_dir
    options = dict(args.storage_option)
    if not is_url(data):
        if args.state_dir is not None:
            raise ConfigurationError("--state-dir: only with a URL --data-dir (s3://...)")
        if options:
            raise ConfigurationError("--storage-option: only with a URL --data-dir (s3://...)")
        return Path(data.removeprefix("file://")).expanduser(), "", {}
    state = args.state_dir.expanduser() if args.state_dir else default_state_dir(data)
    return state, data.rstrip("/"), options


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is not None:
        try:
            token: str = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(
                f"--token-file: cannot read {args.token_file}: {exc}"
            ) from None
        if not token:
            raise ConfigurationError(f"--token-file: {args.token_file} is empty")
        return token
    env: str | None = os.environ.get(TOKEN_ENV)
    return env or None


DEMO_CONFIG: dict[str, Any] = {
    "field_height": 32,
    "field_width": 32,
    "num_agents": 16,
    "num_envs": 8,
    "learning_rate": 5e-3,
}
"""The demo run: big enough for structure to show on the field, small and fast-learning
enough that reward and the emergence index climb visibly within a minute on 2 CPU cores
(measured: about 8,000 steps a minute, emergence index +40% in the first minute)."""
DEMO_STEPS = 1_000_000


def demo_spec() -> Any:
    """The spec of the run `trainsvc serve --demo` creates."""
    from trainsvc._domain import RunSpec

    return RunSpec(
        kind="emergence",
        step_budget=DEMO_STEPS,
        seed=0,
        config=dict(DEMO_CONFIG),
        display_name="demo",
    )


async def _demo(server: Any) -> None:
    """Make sure a demo run trains (resume an interrupted one, else create one); say how to watch."""
    from trainsvc._domain import State

    registry, manager = server.registry, server.manager
    active = registry.runs_in_states((State.PENDING, State.RUNNING, State.PAUSED))
    interrupted = registry.runs_in_states((State.INTERRUPTED,))
    if active:
        run = active[-1]
    elif interrupted:
        run = manager.resume(interrupted[-1].id, "", None)
    else:
        run = manager.create_run(demo_spec(), "")
    listen = server.options.listen
    flag = "" if listen == "127.0.0.1:50051" else f" --server {listen}"
    metrics = f"http://127.0.0.1:{server.metrics_port}/metrics" if server.metrics_port else "(off)"
    print(
        f"\ntrainsvc is running on {listen} (data in {server.options.data_dir}/).\n"
        f"Demo run:  {run.name}\n"
        f"Watch it:  trainsvc-cli runs watch {run.name}{flag}\n"
        f"Metrics:   {metrics}\n"
        "Stop with Ctrl+C (active runs are checkpointed first; `make run` again resumes).\n",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of `trainsvc`."""
    args = _parser().parse_args(argv)
    from trainsvc._logging import setup_logging

    setup_logging(args.log_format, args.log_level)
    try:
        data_dir, data_url, storage_options = _data_location(args)
        options = ServerOptions(
            listen=args.listen,
            data_dir=data_dir,
            data_url=data_url,
            storage_options=storage_options,
            token=_token(args),
            insecure=args.insecure,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            metrics_listen=args.metrics_listen,
            auto_resume=args.auto_resume,
            max_streams=args.max_streams,
            shutdown_timeout=args.shutdown_timeout,
            worker_nice=args.worker_nice,
            worker_cpus=args.worker_cpus,
            input_dirs=tuple(args.input_dir),
            openai_listen=args.openai_listen,
            trajectory_db=args.trajectory_db,
            automation_poll_s=args.automation_poll,
            models_storage=args.models_storage,
            token_principal=args.token_principal,
            registry=args.registry,
            registry_lease_ttl=args.registry_lease_ttl,
            backend=args.backend,
            ray_address=args.ray_address,
            ray_listen=args.ray_listen,
        )
        serve(options, _demo if args.demo else None)
    except ConfigurationError as exc:
        print(f"trainsvc: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
