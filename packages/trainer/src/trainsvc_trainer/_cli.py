"""``trainsvc-train``: run the emergence trainer from the command line.

Exit codes: 0 finished, 1 error or interrupted (after saving an emergency
checkpoint), 2 reserved for crash loops (never used here).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from trainsvc_trainer._config import Config, ConfigError, field_specs
from trainsvc_trainer._distributed import DistributedConfig, DistributedError

EPILOG = """\
Every config field is a flag: --SECTION.FIELD-NAME VALUE (dashes or underscores),
e.g. --train.total-steps 1000 --log.save-interval 200. Flags override --config,
which overrides the defaults. When resuming, fields you do not set come from the
checkpoint. Use 'none' for an optional field's null. See docs/trainer.md.

Data-parallel across processes (one per host, or several on one host): start the
same command in every process with --coordinator HOST:PORT (process 0's address)
--num-processes N --process-id I; env.n_envs environments are split among them.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one flag per config field."""
    parser = _Parser(
        prog="trainsvc-train",
        description="Train the multi-agent emergence policy (JAX), with checkpoints and resume.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="FILE.toml", help="TOML file with [env] [policy] [train] [log] tables"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    parser.add_argument(
        "--wandb",
        "--log.wandb",
        dest="log.wandb",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log to Weights & Biases (offline unless --log.wandb-mode online)",
    )
    dist = parser.add_argument_group("data-parallel (every process runs the same command)")
    dist.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="process 0's coordination address (process 0 listens on PORT)",
    )
    dist.add_argument("--num-processes", metavar="N", help="processes in the run")
    dist.add_argument("--process-id", metavar="I", help="this process's index, 0 to N-1")
    dist.add_argument(
        "--distributed-timeout",
        metavar="SECONDS",
        default="60",
        help="wait this long for every process to join; a process silent this long is dead "
        "(default 60)",
    )
    for dotted, (type_name, default, spec) in field_specs().items():
        if dotted == "log.wandb":
            continue
        section, name = dotted.split(".")
        flags = [f"--{section}.{name.replace('_', '-')}"]
        if "_" in name:
            flags.append(f"--{dotted}")
        parser.add_argument(
            *flags,
            dest=dotted,
            default=None,
            metavar=str(type_name).split(" ")[0].upper(),
            help=f"{spec.help} ({spec.describe()}; default {default!r})",
        )
    return parser


def _parse_value(dotted: str, text: Any) -> Any:
    """Converts a flag's text to the field's type; ConfigError names the field on failure."""
    if not isinstance(text, str):
        return text
    type_name, _, spec = field_specs()[dotted]
    type_name = str(type_name)
    if "None" in type_name and text.lower() in ("none", "null"):
        return None
    type_name = type_name.removesuffix(" | None")
    try:
        if type_name == "int":
            return int(text)
        if type_name == "float":
            return float(text)
        if type_name == "bool":
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError(text)
    except ValueError:
        kind = {"int": "an integer", "float": "a number", "bool": "true or false"}[type_name]
        raise ConfigError(dotted, f"must be {kind} {spec.describe()}, got {text!r}") from None
    return text


def _load_toml(path: str) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted in field_specs():
        value = getattr(args, dotted, None)
        if value is not None:
            out[dotted] = _parse_value(dotted, value)
    return out


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, table in data.items():
        if isinstance(table, dict):
            for name, value in table.items():
                flat[f"{section}.{name}"] = value
        else:
            flat[section] = table
    return flat


def resolve_distributed(args: argparse.Namespace) -> DistributedConfig | None:
    """The data-parallel settings of the flags, or None for a single process."""
    given = {
        "coordinator": args.coordinator,
        "num_processes": args.num_processes,
        "process_id": args.process_id,
    }
    if all(v is None for v in given.values()):
        return None
    for name, value in given.items():
        if value is None:
            others = ", ".join(f"--{n.replace('_', '-')}" for n in given if n != name)
            raise ConfigError(
                f"distributed.{name}",
                f"missing: --{name.replace('_', '-')} is required with {others}",
            )
    numbers: dict[str, int] = {}
    for name, text in (
        ("num_processes", args.num_processes),
        ("process_id", args.process_id),
        ("timeout_s", args.distributed_timeout),
    ):
        try:
            numbers[name] = int(text)
        except ValueError:
            raise ConfigError(f"distributed.{name}", f"must be an integer, got {text!r}") from None
    return DistributedConfig(args.coordinator, **numbers)


def resolve_config(args: argparse.Namespace) -> tuple[Config, dict[str, Any]]:
    """The run's config from defaults, ``--config`` and flags; also the explicit settings."""
    file_data = _load_toml(args.config) if args.config else {}
    Config.from_dict(file_data)  # validates the file on its own, naming its fields
    explicit = {**_flatten(file_data), **_overrides(args)}
    return Config().replace(explicit), explicit


class _Stopper:
    """First SIGTERM/SIGINT asks the loop to stop after the current step; a second one kills."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.signal = signum

    def __call__(self) -> bool:
        return self.signal is not None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trainsvc-train``; returns the exit code."""
    args = build_parser().parse_args(argv)
    stopper = _Stopper()
    stopper.install()
    try:
        return _run(args, stopper)
    except ConfigError as exc:
        _fail(args, f"error: {exc}", field=exc.field)
    except DistributedError as exc:
        # the run is lost: leave at once, without jax.distributed's shutdown barrier
        # (it would wait for the dead process)
        if args.json:
            print(json.dumps({"status": "error", "error": str(exc), "field": None}), flush=True)
        print(f"trainsvc-train: error: {exc}", file=sys.stderr, flush=True)
        os._exit(1)
    except Exception as exc:
        from trainsvc_trainer._logging import WandbUnavailableError

        if isinstance(exc, WandbUnavailableError | FileNotFoundError | ValueError):
            _fail(args, f"error: {exc}")
        raise


def _fail(args: argparse.Namespace, message: str, field: str | None = None) -> NoReturn:
    if args.json:
        print(json.dumps({"status": "error", "error": message, "field": field}))
    print(f"trainsvc-train: {message}", file=sys.stderr)
    raise SystemExit(1)


def _run(args: argparse.Namespace, stopper: _Stopper) -> int:
    config, explicit = resolve_config(args)  # before importing JAX: bad input fails fast
    distributed = resolve_distributed(args)

    from trainsvc_trainer._logging import ConsoleLogger, JsonlLogger, MultiLogger, WandbLogger
    from trainsvc_trainer._trainer import Trainer, find_checkpoint

    source = None
    if config.train.resume_from is not None:
        found = find_checkpoint(config.train.resume_from, config.log.checkpoint_dir)
        if found is not None:
            source, saved = found
            config = saved.replace(explicit)
    # process 0 writes the checkpoints, metrics and W&B; the others only talk
    writer = distributed is None or distributed.process_id == 0
    if distributed is not None:
        from trainsvc_trainer._distributed import initialize

        distributed.check_envs(config.env.n_envs)
        initialize(distributed)
        # jax.distributed installs its own SIGTERM handler (a preemption notice that
        # nothing here polls): take SIGTERM back, so that it stops every process
        stopper.install()
    console = ConsoleLogger(
        stream=sys.stderr if args.json or not writer else sys.stdout,
        progress=config.log.progress and not args.json and writer,
    )
    checkpoint_dir = Path(config.log.checkpoint_dir)
    metrics_file = config.log.metrics_file or str(checkpoint_dir / "metrics.jsonl")
    trainer = Trainer(config, logger=console, data_parallel=distributed is not None)
    if source is not None:
        trainer.restore(source)
        console.message(f"Resumed from {source} at step {trainer.step_count}")
    elif config.train.resume_from is not None:
        if distributed is not None:  # every process restores (or not) together
            trainer.restore("latest")
        console.message(f"No checkpoint in {checkpoint_dir}; starting from step 0")
    loggers: list[Any] = [console, JsonlLogger(metrics_file)] if writer else [console]
    if config.log.wandb and writer:
        loggers.append(
            WandbLogger(
                config.log.wandb_project,
                trainer.run_id,
                mode=config.log.wandb_mode,
                directory=config.log.wandb_dir or checkpoint_dir,
                config=config.to_dict(),
            )
        )
    trainer.logger = MultiLogger(loggers)
    try:
        trainer.run(should_stop=stopper)
        status = "completed"
        # data-parallel: a signal to any process stops them all after the same step
        if stopper.signal is not None or (distributed is not None and trainer.remaining_steps):
            status = "interrupted"
            path = trainer.save_checkpoint(emergency=True)
            name = signal.Signals(stopper.signal).name if stopper.signal else "another process"
            console.message(f"Stopped by {name} at step {trainer.step_count}")
    except (DistributedError, ConfigError):
        raise
    except Exception as exc:
        if distributed is None:
            raise
        raise DistributedError(
            f"process {distributed.process_id} of {distributed.num_processes} failed at step "
            f"{trainer.step_count} ({type(exc).__name__}: {exc}); another process probably died. "
            "Relaunch every process with --train.resume-from latest"
        ) from exc
    finally:
        trainer.close()
    summary = {
        "status": status,
        "step": trainer.step_count,
        "total_steps": config.train.total_steps,
        "checkpoint_dir": str(checkpoint_dir),
        "checkpoints": [int(s) for s in trainer.checkpoint_manager.steps()],
        "metrics": trainer.last_metrics,
    }
    if status == "interrupted":
        summary["emergency_checkpoint"] = str(path)
    if args.json:
        print(json.dumps(summary, sort_keys=True, default=float))
    else:
        reward = trainer.last_metrics.get("reward", float("nan"))
        console.message(
            f"Training {status}: step {trainer.step_count}/{config.train.total_steps}, "
            f"reward {reward:.4f}, checkpoints in {checkpoint_dir}"
        )
    return 0 if status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
