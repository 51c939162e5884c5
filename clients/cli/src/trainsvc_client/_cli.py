"""trainsvc-cli: drive a trainsvc service from the shell.

Exit codes: 0 success, 1 error (bad input, unknown run, service unreachable,
a watched run that FAILED), 2 a watched run that FAILED in a crash loop.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from trainsvc_api.v1 import models_pb2 as mpb
from trainsvc_api.v1 import trainsvc_pb2 as pb

from trainsvc_client._channel import DEFAULT_ADDRESS
from trainsvc_client._client import Client, connect
from trainsvc_client._config import KINDS, kind_name
from trainsvc_client._errors import TrainsvcError

app = typer.Typer(help="Control a trainsvc training service.", no_args_is_help=True)
runs_app = typer.Typer(help="Create, inspect and control runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
models_app = typer.Typer(
    help="Register model versions, route their traffic, promote and roll back.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")

out = Console()
err = Console(stderr=True)

ServerOpt = Annotated[
    str, typer.Option("--server", envvar="TRAINSVC_SERVER", help="Service address host:port.")
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="TRAINSVC_TOKEN", help="Bearer token (needed beyond loopback)."),
]
TlsOpt = Annotated[bool, typer.Option("--tls", envvar="TRAINSVC_TLS", help="Connect with TLS.")]
CaOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca-cert",
        envvar="TRAINSVC_CA_CERT",
        help="PEM file of the CA (or self-signed cert) to trust.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
RunArg = Annotated[str, typer.Argument(help="The run: runs/ID or ID.")]

TERMINAL = {pb.Run.COMPLETED, pb.Run.STOPPED, pb.Run.FAILED}
ACTIVE = {pb.Run.PENDING, pb.Run.RUNNING, pb.Run.PAUSED}
SAMPLE_WAIT_S = 2.0
"""How long `runs get` waits for a lora run's frame (with its latest sample)."""
LORA_PATHS = {"--model": "model", "--train": "train_file", "--validation": "validation_file"}


@app.callback()
def _connection(
    server: Annotated[
        str | None, typer.Option("--server", help="Service address host:port (for every command).")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="Bearer token (for every command).")
    ] = None,
    tls: Annotated[bool, typer.Option("--tls", help="Connect with TLS (every command).")] = False,
    ca_cert: Annotated[
        Path | None, typer.Option("--ca-cert", help="CA PEM file to trust (every command).")
    ] = None,
) -> None:
    """Control a trainsvc training service.

    The connection options work before the command (`trainsvc-cli --server HOST:PORT
    runs list`) or after it; given after it, they win.
    """
    # Each command reads its connection options from these variables when they are
    # not given on its own: this makes the top-level form win over the environment.
    given = {
        "TRAINSVC_SERVER": server,
        "TRAINSVC_TOKEN": token,
        "TRAINSVC_TLS": "1" if tls else None,
        "TRAINSVC_CA_CERT": str(ca_cert) if ca_cert is not None else None,
    }
    for var, value in given.items():
        if value is not None:
            os.environ[var] = value


def _client(server: str, token: str | None, tls: bool, ca_cert: Path | None) -> Client:
    roots = ca_cert.read_bytes() if ca_cert is not None else None
    return connect(server, token or None, tls=tls or roots is not None, root_certificates=roots)


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _to_dict(msg: Message) -> dict[str, Any]:
    return MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def _state(run: pb.Run) -> str:
    return pb.Run.State.Name(run.state)


MIN_MESSAGE_WIDTH = 16
"""The message column is shown only when at least this many characters are left for it."""


def _runs_table(runs: list[pb.Run], width: int | None = None) -> RenderableType:
    """The runs as a table that fits ``width`` (default: the terminal's) without splitting words.

    The name is what people copy and the state what they (and scripts) read, so
    neither ever wraps or shortens; when the terminal is too narrow, whole columns
    are left out instead, the message first (then printed below the table, one
    line per run), then restarts, steps/s, budget, step.
    """
    width = out.width if width is None else width
    cells: dict[str, list[str]] = {
        "NAME": [r.name for r in runs],
        "KIND": [kind_name(r.kind) for r in runs],
        "STATE": [_state(r) for r in runs],
        "STEP": [str(r.step) for r in runs],
        "BUDGET": [str(r.step_budget) for r in runs],
        "STEPS/S": [f"{r.steps_per_second:.1f}" for r in runs],
        "RESTARTS": [str(r.restarts) for r in runs],
    }
    needed = {col: max([len(col), *map(len, values)]) + 3 for col, values in cells.items()}
    shown: set[str] = set()
    used = 1  # the table's left border
    for col in ("NAME", "STATE", "KIND", "STEP", "BUDGET", "STEPS/S", "RESTARTS"):
        if col in ("NAME", "STATE") or used + needed[col] <= width:
            shown.add(col)
            used += needed[col]
    with_message = width - used - 3 >= MIN_MESSAGE_WIDTH
    table = Table(show_lines=False)
    columns = [c for c in cells if c in shown]
    for col in columns:
        right = col in {"STEP", "BUDGET", "STEPS/S", "RESTARTS"}
        table.add_column(col, justify="right" if right else "left", no_wrap=True)
    if with_message:
        table.add_column("MESSAGE", overflow="fold", ratio=1)
    for row, run in enumerate(runs):
        values = [cells[col][row] for col in columns]
        table.add_row(*values, *([run.state_message] if with_message else []))
    if with_message:
        return table
    notes = [Text(f"{r.name}: {r.state_message}") for r in runs if r.state_message]
    return Group(table, *notes)


def _show_run(run: pb.Run, as_json: bool) -> None:
    if as_json:
        _print_json(_to_dict(run))
    else:
        out.print(_runs_table([run]))


def _parse_sets(sets: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs: the value as JSON when it parses, else as a string."""
    values: dict[str, Any] = {}
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--set: expected KEY=VALUE, got {item!r}")
        try:
            values[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            values[key.strip()] = text
    return values


def _lora_paths(kind: str, given: dict[str, Path | None]) -> dict[str, str]:
    """The lora kind's path options as config fields (absolute: the service has its own cwd)."""
    named = {flag: path for flag, path in given.items() if path is not None}
    if named and kind.lower() != "lora":
        _fail(f"{', '.join(named)}: only for --kind lora")
    return {LORA_PATHS[flag]: str(path.expanduser().absolute()) for flag, path in named.items()}


def _sample_json(lm: pb.LMPayload) -> dict[str, Any]:
    return {
        "step": lm.sample_step,
        "prompt": lm.sample_prompt,
        "completion": lm.sample_completion,
    }


def _print_sample(console: Console, lm: pb.LMPayload) -> None:
    console.print(f"sample at step {lm.sample_step}:", style="bold", highlight=False)
    console.print(f"  prompt:     {lm.sample_prompt[-300:]!r}", markup=False, highlight=False)
    console.print(f"  completion: {lm.sample_completion!r}", markup=False, highlight=False)


def _latest_sample(client: Client, run: pb.Run) -> pb.LMPayload | None:
    """A lora run's latest sample completion, from its newest frame (None when none yet)."""
    if run.kind != pb.Run.LORA or run.state not in ACTIVE:
        return None
    stream = client.stream_frames(run.name, timeout=SAMPLE_WAIT_S)
    try:
        for frame in stream:
            return frame.lm if frame.lm.sample_step else None
    except TrainsvcError:  # no frame in time (still starting): nothing to show
        return None
    finally:
        stream.cancel()
    return None


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except TrainsvcError as exc:
        _fail(str(exc))


@app.command()
def serve(
    ctx: typer.Context,
    args: Annotated[list[str] | None, typer.Argument(help="Arguments of `trainsvc serve`.")] = None,
) -> None:
    """Run the service (same as `trainsvc serve`; needs the `trainsvc` package)."""
    # The service's own command, in this process's place: a client never imports the
    # service (it sits above it), and signals reach the service as if run directly.
    beside = Path(sys.executable).parent / "trainsvc"
    command = str(beside) if beside.exists() else shutil.which("trainsvc")
    if command is None:
        _fail("the service is not installed: pip install trainsvc")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command, [command, "serve", *(args or [])])


@runs_app.command("create")
def runs_create(
    kind: Annotated[str, typer.Option("--kind", help=f"Trainer kind: {', '.join(KINDS)}.")],
    steps: Annotated[int, typer.Option("--steps", help="Step budget (games for othello).")],
    seed: Annotated[int, typer.Option("--seed", help="Seed.")] = 0,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file with the kind's config.")
    ] = None,
    checkpoint_interval: Annotated[
        int, typer.Option("--checkpoint-interval", help="Checkpoint every N steps (0 = default).")
    ] = 0,
    keep_last: Annotated[int, typer.Option("--keep-last", help="Checkpoints kept (0 = 5).")] = 0,
    max_restarts: Annotated[
        int | None, typer.Option("--max-restarts", help="Crashes tolerated (default 3).")
    ] = None,
    run_id: Annotated[str, typer.Option("--id", help="Run id (default: generated).")] = "",
    name: Annotated[str, typer.Option("--display-name", help="A label.")] = "",
    resume_from: Annotated[
        str, typer.Option("--resume-from", help="runs/ID/checkpoints/CKPT to start from.")
    ] = "",
    model: Annotated[
        Path | None,
        typer.Option("--model", help="lora: the base model's directory (Hugging Face layout)."),
    ] = None,
    train: Annotated[
        Path | None, typer.Option("--train", help="lora: the training examples (chat JSONL).")
    ] = None,
    validation: Annotated[
        Path | None,
        typer.Option("--validation", help="lora: held-out examples (chat JSONL)."),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="A config field as KEY=VALUE (VALUE as JSON, else text), e.g. rank=16 or "
            "optim.warmup_steps=10; repeatable; wins over --config.",
        ),
    ] = None,
    cpus: Annotated[
        float, typer.Option("--cpus", help="CPUs the worker needs (Ray backend placement).")
    ] = 0.0,
    gpus: Annotated[
        float, typer.Option("--gpus", help="GPUs the worker needs (Ray backend placement).")
    ] = 0.0,
    memory: Annotated[
        str, typer.Option("--memory", help="Memory the worker needs: bytes, or 512M, 16G.")
    ] = "",
    custom: Annotated[
        list[str] | None,
        typer.Option("--resource", help="A custom cluster resource as NAME=AMOUNT (repeatable)."),
    ] = None,
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create and start a run; prints the created run.

    Paths (--model, --train, --validation) name files on the service's machine;
    relative ones are made absolute here.
    """
    values: dict[str, Any] | None = None
    if config is not None:
        try:
            values = tomllib.loads(config.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            _fail(f"--config: cannot read {config}: {exc}")
    extra = {
        **_lora_paths(kind, {"--model": model, "--train": train, "--validation": validation}),
        **_parse_sets(sets or []),
    }
    if extra:
        values = {**(values or {}), **extra}
    policy = pb.CheckpointPolicy(interval_steps=checkpoint_interval, keep_last=keep_last)
    with _client(server, token, tls, ca_cert) as client:
        try:
            run = client.create_run(
                kind,
                step_budget=steps,
                seed=seed,
                config=values,
                checkpoint_policy=policy,
                max_restarts=max_restarts,
                display_name=name,
                run_id=run_id,
                resume_from=resume_from,
                resources=_resources(cpus, gpus, memory, custom or []),
            )
        except (TrainsvcError, ValueError) as exc:
            _fail(str(exc))
    _show_run(run, as_json)
    if not as_json:
        out.print(f"watch it: trainsvc-cli runs watch {run.name}")


_MEMORY_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _resources(cpus: float, gpus: float, memory: str, custom: list[str]) -> pb.Resources | None:
    """The run's resource request from the flags (None when none is given)."""
    if not (cpus or gpus or memory or custom):
        return None
    unit = _MEMORY_UNITS.get(memory[-1:].upper(), 1) if memory else 1
    number = memory[:-1] if memory and unit > 1 else memory
    try:
        memory_bytes = int(float(number) * unit) if memory else 0
    except ValueError:
        _fail(f"--memory: expected bytes or a size like 512M or 16G, got {memory!r}")
    amounts: dict[str, float] = {}
    for item in custom:
        key, sep, amount = item.partition("=")
        try:
            amounts[key] = float(amount)
        except ValueError:
            sep = ""
        if not sep or not key:
            _fail(f"--resource: expected NAME=AMOUNT (e.g. node_a=1), got {item!r}")
    return pb.Resources(cpus=cpus, gpus=gpus, memory_bytes=memory_bytes, custom=amounts)


@runs_app.command("list")
def runs_list(
    state: Annotated[str, typer.Option("--state", help="Only runs in this state.")] = "",
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List runs, newest first."""
    state_value = 0
    if state:
        try:
            state_value = pb.Run.State.Value(state.upper())
        except ValueError:
            names = [v.name for v in pb.Run.State.DESCRIPTOR.values if v.number != 0]
            _fail(f"--state: unknown {state!r}; allowed: {', '.join(names)}")
    with _client(server, token, tls, ca_cert) as client:
        runs = _call(lambda: list(client.list_runs(state=state_value)))
    if as_json:
        _print_json({"runs": [_to_dict(r) for r in runs]})
    else:
        out.print(_runs_table(runs))


@runs_app.command("get")
def runs_get(
    run: RunArg,
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one run."""
    with _client(server, token, tls, ca_cert) as client:
        got = _call(client.get_run, run)
        sample = _latest_sample(client, got)
    if as_json:
        data = _to_dict(got)
        if sample is not None:
            data["latest_sample"] = _sample_json(sample)
        _print_json(data)
        return
    out.print(_runs_table([got]))
    if got.metrics:
        out.print("  ".join(f"{k}={v:.4g}" for k, v in sorted(got.metrics.items())))
    if sample is not None:
        _print_sample(out, sample)


def _control(
    method: str,
    run: str,
    server: str,
    token: str | None,
    tls: bool,
    ca_cert: Path | None,
    as_json: bool,
) -> None:
    with _client(server, token, tls, ca_cert) as client:
        got = _call(getattr(client, method), run)
    _show_run(got, as_json)


@runs_app.command("pause")
def runs_pause(
    run: RunArg,
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pause a run (finishes its step and checkpoints)."""
    _control("pause_run", run, server, token, tls, ca_cert, as_json)


@runs_app.command("resume")
def runs_resume(
    run: RunArg,
    checkpoint: Annotated[
        str, typer.Option("--checkpoint", help="Checkpoint id to resume from.")
    ] = "",
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Resume a PAUSED or INTERRUPTED run."""
    with _client(server, token, tls, ca_cert) as client:
        got = _call(client.resume_run, run, checkpoint=checkpoint)
    _show_run(got, as_json)


@runs_app.command("retry")
def runs_retry(
    run: RunArg,
    new_id: Annotated[
        str, typer.Option("--id", help="Id of the new run (default: generated).")
    ] = "",
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Retry a FAILED (or STOPPED) run from its newest checkpoint, as a new run.

    The new run has the same kind, config, seed, step budget and checkpoint
    policy, and starts from the old run's newest checkpoint (the old run stays
    as it was, for its logs and events).
    """
    with _client(server, token, tls, ca_cert) as client:
        old = _call(client.get_run, run)
        if old.state not in (pb.Run.FAILED, pb.Run.STOPPED):
            _fail(
                f"{old.name} is {_state(old)}; retry is for FAILED or STOPPED runs "
                "(resume PAUSED or INTERRUPTED ones with `runs resume`)"
            )
        checkpoints = _call(client.list_checkpoints, old.name)
        if not checkpoints:
            _fail(f"{old.name} has no checkpoint to retry from; create a new run instead")
        newest = max(checkpoints, key=lambda c: (c.step, c.create_time.ToNanoseconds()))
        which = old.WhichOneof("config")
        config = getattr(old, which) if which else None
        label = old.display_name or old.name.removeprefix("runs/")
        new = _call(
            client.create_run,
            old.kind,
            step_budget=old.step_budget,
            seed=old.seed,
            config=config,
            checkpoint_policy=old.checkpoint_policy,
            max_restarts=old.max_restarts if old.HasField("max_restarts") else None,
            display_name=f"{label} (retry)",
            run_id=new_id,
            resume_from=newest.name,
        )
    if as_json:
        _print_json({**_to_dict(new), "retry_of": old.name, "resumed_from": newest.name})
        return
    out.print(f"retrying {old.name} from {newest.name} (step {newest.step}) as {new.name}")
    out.print(_runs_table([new]))
    out.print(f"watch it: trainsvc-cli runs watch {new.name}")


@runs_app.command("stop")
def runs_stop(
    run: RunArg,
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop a run (after a final checkpoint)."""
    _control("stop_run", run, server, token, tls, ca_cert, as_json)


def _checkpoints_table(checkpoints: list[pb.Checkpoint]) -> Table:
    table = Table()
    for col in ("NAME", "STEP", "SIZE", "EMERGENCY", "PATH"):
        table.add_column(col)
    for c in checkpoints:
        table.add_row(
            c.name, str(c.step), f"{c.size_bytes:,}", "yes" if c.emergency else "", c.path
        )
    return table


@runs_app.command("checkpoint")
def runs_checkpoint(
    run: RunArg,
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Save a checkpoint now."""
    with _client(server, token, tls, ca_cert) as client:
        ckpt = _call(client.save_checkpoint, run)
    if as_json:
        _print_json(_to_dict(ckpt))
    else:
        out.print(_checkpoints_table([ckpt]))


@runs_app.command("checkpoints")
def runs_checkpoints(
    run: RunArg,
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a run's checkpoints."""
    with _client(server, token, tls, ca_cert) as client:
        ckpts = _call(client.list_checkpoints, run)
    if as_json:
        _print_json({"checkpoints": [_to_dict(c) for c in ckpts]})
    else:
        out.print(_checkpoints_table(ckpts))


def _exit_for(run: pb.Run) -> int:
    if run.state == pb.Run.FAILED:
        return 2 if "crash loop" in run.state_message else 1
    return 0


@runs_app.command("watch")
def runs_watch(
    run: RunArg,
    rate: Annotated[float, typer.Option("--rate", help="Frames per second to ask for.")] = 10.0,
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Follow a run live until it ends (a progress bar, or JSON lines of frames)."""
    with _client(server, token, tls, ca_cert) as client:
        first = _call(client.get_run, run)
        stream = client.stream_frames(first.name, max_rate_hz=rate)
        try:
            if as_json:
                for frame in stream:
                    line: dict[str, Any] = {
                        "step": frame.step,
                        "sequence": frame.sequence,
                        "metrics": dict(frame.metrics),
                    }
                    if frame.lm.sample_step:
                        line["sample"] = _sample_json(frame.lm)
                    _print_json(line)
            else:
                columns = (
                    TextColumn("{task.description}"),
                    BarColumn(),
                    TextColumn("{task.completed}/{task.total} steps"),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    TextColumn("{task.fields[info]}"),
                )
                with Progress(*columns, console=err) as progress:
                    task = progress.add_task(
                        first.name, total=first.step_budget, completed=first.step, info=""
                    )
                    sample_step = 0
                    for frame in stream:
                        info = "  ".join(
                            f"{k}={v:.3g}" for k, v in sorted(frame.metrics.items())[:4]
                        )
                        progress.update(task, completed=frame.step, info=info)
                        if frame.lm.sample_step != sample_step:  # a new sample completion
                            sample_step = frame.lm.sample_step
                            _print_sample(progress.console, frame.lm)
        except KeyboardInterrupt:
            stream.cancel()
            raise typer.Exit(0) from None
        except TrainsvcError as exc:
            _fail(str(exc))
        final = _call(client.get_run, first.name)
    _show_run(final, as_json)
    raise typer.Exit(_exit_for(final))


@runs_app.command("events")
def runs_events(
    run: Annotated[str, typer.Argument(help="The run (runs/ID or ID), or runs/- for all.")],
    from_sequence: Annotated[int, typer.Option("--from", help="First sequence number.")] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep following.")] = False,
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a run's events (state changes, checkpoints, logs, warnings, errors)."""
    with _client(server, token, tls, ca_cert) as client:
        stream = client.stream_events(run, from_sequence=from_sequence, follow=follow)
        try:
            for event in stream:
                if as_json:
                    _print_json(_to_dict(event))
                else:
                    when = event.time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
                    kind = pb.Event.Type.Name(event.type)
                    out.print(
                        f"{event.sequence:>6} {when} {event.run} step={event.step} "
                        f"{kind}: {event.message}",
                        highlight=False,
                    )
        except KeyboardInterrupt:
            stream.cancel()
        except TrainsvcError as exc:
            _fail(str(exc))


ModelArg = Annotated[str, typer.Argument(help="The model: models/NAME or NAME.")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (kept in the model's events).")]


def _traffic_text(traffic: Any) -> str:
    return ", ".join(f"v{v}: {share:.0%}" for v, share in sorted(dict(traffic).items())) or "-"


def _print_deployment(deployment: mpb.Deployment, as_json: bool) -> None:
    if as_json:
        _print_json(_to_dict(deployment))
    else:
        where = f" on {deployment.external_base_url}" if deployment.external_base_url else ""
        out.print(
            f"{deployment.model}: {_traffic_text(deployment.traffic)}{where}", highlight=False
        )


@models_app.command("list")
def models_list(
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the registered models, their versions and traffic."""
    with _client(server, token, tls, ca_cert) as client:
        models = _call(client.models.list)
    if as_json:
        _print_json([_to_dict(m) for m in models])
        return
    table = Table("model", "version", "kind", "evaluation", "traffic", "source run", "metrics")
    for model in models:
        traffic = dict(model.deployment.traffic)
        for v in model.versions:
            metrics = " ".join(f"{k}={x:.4g}" for k, x in sorted(v.metrics.items()))
            share = f"{traffic[v.version]:.0%}" if v.version in traffic else ""
            table.add_row(
                v.model, str(v.version), v.artifact_kind, v.evaluation, share, v.source_run, metrics
            )
    out.print(table)


@models_app.command("get")
def models_get(
    model: ModelArg,
    version: Annotated[int, typer.Argument(help="The version number.")],
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
) -> None:
    """Show one version (JSON)."""
    with _client(server, token, tls, ca_cert) as client:
        _print_json(_to_dict(_call(client.models.get, model, version)))


@models_app.command("register")
def models_register(
    model: ModelArg,
    artifact_dir: Annotated[
        str, typer.Argument(help="Adapter or model directory on the service's machine.")
    ],
    kind: Annotated[str, typer.Option("--kind", help="adapter or full.")] = "adapter",
    base_model: Annotated[str, typer.Option("--base-model", help="The base model.")] = "",
    source_run: Annotated[str, typer.Option("--source-run", help="runs/ID it came from.")] = "",
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="NAME=VALUE (repeatable).")
    ] = None,
    window: Annotated[
        list[str] | None, typer.Option("--window", help="Trajectory window (repeatable).")
    ] = None,
    reason: ReasonOpt = "",
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register the next version of a model from an artifact directory."""
    metrics: dict[str, float] = {}
    for item in metric or []:
        name, sep, value = item.partition("=")
        try:
            metrics[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            _fail(f"--metric: expected NAME=NUMBER, got {item!r}")
    with _client(server, token, tls, ca_cert) as client:
        version = _call(
            client.models.register,
            model,
            artifact_dir,
            artifact_kind=kind,
            base_model=base_model,
            source_run=source_run,
            metrics=metrics,
            windows=window or [],
            reason=reason,
        )
    if as_json:
        _print_json(_to_dict(version))
    else:
        out.print(f"registered {version.name} ({version.artifact_uri})", highlight=False)


@models_app.command("traffic")
def models_traffic(
    model: ModelArg,
    split: Annotated[list[str], typer.Argument(help="VERSION=SHARE pairs summing to 1.")],
    reason: ReasonOpt = "",
    external: Annotated[
        str,
        typer.Option(
            "--external-base-url",
            help="Generate on this server: vllm+http://H:P, ollama+http://H:P or http://H:P.",
        ),
    ] = "",
    local: Annotated[
        bool, typer.Option("--local", help="Generate on trainsvc's own engines again.")
    ] = False,
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a model's traffic split, e.g. `models traffic trader 1=0.8 2=0.2`."""
    traffic: dict[int, float] = {}
    for item in split:
        version, sep, share = item.partition("=")
        try:
            traffic[int(version)] = float(share)
        except ValueError:
            sep = ""
        if not sep:
            _fail(f"split: expected VERSION=SHARE (e.g. 2=0.2), got {item!r}")
    with _client(server, token, tls, ca_cert) as client:
        deployment = _call(
            client.models.set_traffic,
            model,
            traffic,
            reason=reason,
            external_base_url=external,
            local=local,
        )
    _print_deployment(deployment, as_json)


@models_app.command("promote")
def models_promote(
    model: ModelArg,
    version: Annotated[int, typer.Argument(help="The version to promote.")],
    fraction: Annotated[
        float, typer.Option("--fraction", help="Share of traffic it gets (0-1].")
    ] = 1.0,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if it failed its evaluation.")
    ] = False,
    reason: ReasonOpt = "",
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give a version a fraction of its model's traffic (the rest keeps its proportions)."""
    with _client(server, token, tls, ca_cert) as client:
        deployment = _call(
            client.models.promote, model, version, fraction, force=force, reason=reason
        )
    _print_deployment(deployment, as_json)


@models_app.command("rollback")
def models_rollback(
    model: ModelArg,
    reason: ReasonOpt = "",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Restore the traffic split before the last change."""
    if not yes and not typer.confirm(f"Roll back {model}'s traffic to its previous split?"):
        _fail("not rolled back")
    with _client(server, token, tls, ca_cert) as client:
        deployment = _call(client.models.rollback, model, reason=reason)
    _print_deployment(deployment, as_json)


@models_app.command("events")
def models_events(
    model: Annotated[str, typer.Argument(help="The model, or nothing for all.")] = "",
    after: Annotated[int, typer.Option("--after", help="Only events after this sequence.")] = 0,
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the model registry's changes: who, when, why and the numbers."""
    with _client(server, token, tls, ca_cert) as client:
        events = _call(client.models.events, model, after=after)
    for event in events:
        if as_json:
            _print_json(_to_dict(event))
            continue
        when = event.time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        who = event.principal or "-"
        severity = "" if event.severity in ("", "info") else f" [{event.severity}]"
        out.print(
            f"{event.sequence:>6} {when} {event.model} v{event.version} {event.type}{severity} "
            f"by {who}: {event.reason} {event.details_json}",
            highlight=False,
        )


automation_app = typer.Typer(
    help="A model's automation: retrain on new trajectories, evaluate, promote, soak, "
    "roll back (see docs/models.md).",
    no_args_is_help=True,
)
models_app.add_typer(automation_app, name="automation")

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(text: str, name: str) -> int:
    """``90``, ``90s``, ``15m``, ``2h`` or ``1d`` as seconds."""
    unit = text[-1:] if text[-1:] in _DURATION_UNITS else "s"
    number = text[:-1] if text[-1:] in _DURATION_UNITS else text
    try:
        value = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        _fail(f"{name}: expected a duration like 90, 15m, 2h or 1d, got {text!r}")
    return int(value)


def _pairs(items: list[str], name: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"{name}: expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _print_automation(automation: mpb.Automation) -> None:
    p = automation.policy
    when = f"every {p.interval_seconds} s" if p.interval_seconds else f"cron {p.cron!r}"
    state = "enabled" if p.enabled else "disabled"
    out.print(
        f"{automation.name}: {state}{' (dry run)' if p.dry_run else ''}, {when}; "
        f"phase {automation.phase}"
        + (f", run {automation.run}" if automation.run else "")
        + (
            f", candidate v{automation.candidate_version} vs v{automation.baseline_version}"
            if automation.candidate_version
            else ""
        ),
        highlight=False,
    )
    if automation.HasField("next_run_time"):
        out.print(f"  next check: {automation.next_run_time.ToDatetime():%Y-%m-%d %H:%M:%S} UTC")
    if automation.last_decision:
        out.print(f"  last decision: {automation.last_decision}", highlight=False)


@automation_app.command("set")
def automation_set(
    model: ModelArg,
    judge: Annotated[
        str, typer.Option("--judge", help="task:<name>, or llm (with --judge-url, --judge-model).")
    ],
    every: Annotated[
        str, typer.Option("--every", help="Check on an interval: 90, 15m, 2h, 1d.")
    ] = "",
    cron: Annotated[str, typer.Option("--cron", help="Check on a cron schedule (UTC).")] = "",
    min_trajectories: Annotated[
        int, typer.Option("--min-trajectories", help="New complete trajectories to train.")
    ] = 50,
    quality: Annotated[
        list[str],
        typer.Option("--quality", help="A quality threshold, e.g. min_reward_coverage=0.95."),
    ] = [],  # noqa: B006 (typer reads the default)
    steps: Annotated[int, typer.Option("--steps", help="The grpo run's step budget.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="The grpo run's seed.")] = 0,
    grpo: Annotated[
        list[str], typer.Option("--set", help="A grpo config override, e.g. grpo.group_size=8.")
    ] = [],  # noqa: B006
    holdout: Annotated[
        list[str], typer.Option("--holdout", help="A held-out scenario id (repeatable).")
    ] = [],  # noqa: B006
    eval_samples: Annotated[
        int, typer.Option("--eval-samples", help="Completions per held-out prompt per version.")
    ] = 4,
    judge_url: Annotated[str, typer.Option("--judge-url", help="The LLM judge's base URL.")] = "",
    judge_model: Annotated[str, typer.Option("--judge-model", help="The LLM judge's model.")] = "",
    margin: Annotated[
        float, typer.Option("--margin", help="How much better the held-out score must be.")
    ] = 0.0,
    fraction: Annotated[
        float, typer.Option("--fraction", help="Traffic share during the soak.")
    ] = 0.2,
    soak: Annotated[str, typer.Option("--soak", help="Soak duration: 90, 15m, 2h.")] = "1h",
    min_soak: Annotated[
        int, typer.Option("--min-soak", help="Rewarded trajectories per version in the soak.")
    ] = 20,
    regression_margin: Annotated[
        float, typer.Option("--regression-margin", help="Live-reward drop that rolls back.")
    ] = 0.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Record decisions as events, never act.")
    ] = False,
    disable: Annotated[
        bool, typer.Option("--disable", help="Keep the policy, stop firing.")
    ] = False,
    reason: ReasonOpt = "",
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a model's automation policy, e.g. `models automation set trader --every 1h --judge task:increment4 --holdout s9`."""
    policy = mpb.AutomationPolicy(
        enabled=not disable,
        interval_seconds=_seconds(every, "--every") if every else 0,
        cron=cron,
        min_new_trajectories=min_trajectories,
        quality={k: float(v) for k, v in _pairs(quality, "--quality").items()},
        step_budget=steps,
        seed=seed,
        grpo_overrides=_pairs(grpo, "--set"),
        holdout_scenarios=holdout,
        eval_samples=eval_samples,
        judge=judge,
        judge_base_url=judge_url,
        judge_model=judge_model,
        margin=margin,
        initial_fraction=fraction,
        soak_seconds=_seconds(soak, "--soak"),
        min_soak_trajectories=min_soak,
        regression_margin=regression_margin,
        dry_run=dry_run,
    )
    with _client(server, token, tls, ca_cert) as client:
        automation = _call(client.models.set_automation, model, policy, reason=reason)
    if as_json:
        _print_json(_to_dict(automation))
    else:
        _print_automation(automation)


@automation_app.command("get")
def automation_get(
    model: ModelArg,
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a model's automation policy and where its cycle stands."""
    with _client(server, token, tls, ca_cert) as client:
        automation = _call(client.models.get_automation, model)
    if as_json:
        _print_json(_to_dict(automation))
    else:
        _print_automation(automation)


@automation_app.command("run")
def automation_run(
    model: ModelArg,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the decisions; act on none, record none.")
    ] = False,
    server: ServerOpt = DEFAULT_ADDRESS,
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca_cert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Advance a model's automation now, whether due or not, and print its decisions."""
    with _client(server, token, tls, ca_cert) as client:
        reply = _call(client.models.run_automation, model, dry_run=dry_run, timeout=1800.0)
    if as_json:
        _print_json(_to_dict(reply))
        return
    for d in reply.decisions:
        tag = " (dry run)" if d.dry_run else ""
        out.print(f"{d.severity:>7} {d.action}{tag}: {d.reason}", highlight=False)
    if not reply.decisions:
        out.print("nothing to decide now", highlight=False)
    _print_automation(reply.automation)


def main() -> None:
    """Entry point of `trainsvc-cli`."""
    app()
