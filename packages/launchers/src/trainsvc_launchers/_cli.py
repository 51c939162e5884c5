"""``trainsvc-launch``: preflight, local/h100/m4 launches and the Kaggle workflow."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from trainsvc_launchers._config import ConfigError, LaunchConfig, load_launch_config
from trainsvc_launchers._credentials import find_kaggle_credentials
from trainsvc_launchers._files import write_json_atomic
from trainsvc_launchers._output import ExitCode, Reporter

__all__ = ["build_parser", "main"]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per line instead of text"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``trainsvc-launch``."""
    parser = argparse.ArgumentParser(
        prog="trainsvc-launch",
        description="Launch trainsvc training where the GPUs are: a local or rented GPU box (tmux), "
        "Apple Silicon, or Kaggle. Exit codes: 0 ok, 1 error, 2 crash loop.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    # Parsed by trainsvc_launchers.distributed itself (`trainsvc-launch distributed --help`).
    sub.add_parser(
        "distributed",
        help="start a data-parallel trainsvc-train run, process i on host i (ssh), "
        "relaunching all of them on a failure",
        add_help=False,
    )

    pre = sub.add_parser("preflight", help="check Python, accelerator, disk, RAM and the config")
    _common(pre)
    pre.add_argument("--target", required=True, choices=("h100", "m4", "local", "kaggle"))
    pre.add_argument("--config", type=Path, help="launch config (TOML or JSON) to validate")
    pre.add_argument(
        "--data-dir", type=Path, default=Path(".trainsvc"), help="where checkpoints go"
    )
    pre.add_argument(
        "--env-file", type=Path, help="a .env file with Kaggle credentials (default ./.env)"
    )

    for target, help_text in (
        ("local", "start trainsvc and the run in a tmux session on this machine"),
        ("h100", "the same on a rented Linux GPU box (H100 or any NVIDIA GPU)"),
        (
            "m4",
            "run on Apple Silicon: smaller batches, frequent checkpoints, ETA, thermal warnings",
        ),
    ):
        p = sub.add_parser(target, help=help_text)
        _common(p)
        p.add_argument("--config", type=Path, required=True, help="launch config (TOML or JSON)")
        p.add_argument("--data-dir", type=Path, default=Path(".trainsvc"), help="service data dir")
        p.add_argument(
            "--logs-dir", type=Path, default=Path("logs"), help="where training_*.log go"
        )
        p.add_argument(
            "--port", type=int, default=50051, help="port trainsvc listens on (127.0.0.1)"
        )
        p.add_argument(
            "--watch-steps", type=int, default=100, help="steps watched for early errors"
        )
        p.add_argument(
            "--watch-timeout", type=float, default=1800.0, help="seconds to wait for them"
        )
        p.add_argument(
            "--env",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="an environment variable for the service and training (repeatable); "
            "the launcher's own environment is passed on as well",
        )
        if target != "m4":
            p.add_argument("--session", help="tmux session name (default trainsvc-<run_id>)")
            p.add_argument(
                "--tmux-socket", help="tmux server socket name (tmux -L), for an isolated server"
            )
        else:
            p.add_argument(
                "--foreground", action="store_true", help="stay attached until the run ends"
            )

    from trainsvc_launchers._lifecycle import add_parsers

    add_parsers(sub, _common)

    kg = sub.add_parser("kaggle", help="submit, monitor and chain Kaggle sessions")
    ksub = kg.add_subparsers(dest="kaggle_command", required=True)
    for name, help_text in (
        ("submit", "build the kernel folder and push it"),
        ("monitor", "poll until done, download the output, chain sessions"),
        ("status", "quota, state.json and the session's Kaggle status"),
        ("output", "download the current session's output"),
    ):
        p = ksub.add_parser(name, help=help_text)
        _common(p)
        p.add_argument(
            "--config", type=Path, required=True, help="launch config with a [kaggle] section"
        )
        p.add_argument(
            "--state-dir",
            type=Path,
            help="state.json and outputs (default .trainsvc/kaggle/<slug>)",
        )
        p.add_argument(
            "--env-file", type=Path, help="a .env file with Kaggle credentials (default ./.env)"
        )
        if name == "submit":
            p.add_argument(
                "--resubmit",
                action="store_true",
                help="push the current session again (after a fix)",
            )
            p.add_argument("--next", action="store_true", help="submit the next session of a chain")
        if name == "monitor":
            p.add_argument("--interval", type=float, default=60.0, help="seconds between polls")
            p.add_argument(
                "--max-hours", type=float, default=13.0, help="stop monitoring after this long"
            )
            p.add_argument(
                "--max-polls", type=int, help="stop after this many polls (resume by re-running)"
            )
            p.add_argument(
                "--chain", action="store_true", help="submit the next session until the step budget"
            )
            p.add_argument(
                "--background",
                action="store_true",
                help="run detached (new session); log in the state dir",
            )
    ds = ksub.add_parser("datasets", help="upload a dataset of wheels for offline installs")
    _common(ds)
    ds.add_argument("--wheels-dir", type=Path, required=True, help="folder of .whl files")
    ds.add_argument("--dataset", required=True, help="owner/slug of the dataset to create")
    ds.add_argument("--title", help="dataset title (default: the slug)")
    ds.add_argument(
        "--env-file", type=Path, help="a .env file with Kaggle credentials (default ./.env)"
    )
    nb = ksub.add_parser(
        "notebook", help="write the Kaggle notebook generated from the bootstrapper"
    )
    _common(nb)
    nb.add_argument("--out", type=Path, default=Path("notebooks/kaggle_training.ipynb"))
    return parser


def _load_config(path: Path, out: Reporter, section: str) -> LaunchConfig | None:
    try:
        return load_launch_config(path)
    except ConfigError as exc:
        for err in exc.errors:
            out.error(section, f"config: {err}", field=err.field)
        return None


def _kaggle(args: argparse.Namespace, out: Reporter) -> ExitCode:
    from trainsvc_launchers._kaggle_api import KaggleError, KaggleService

    if args.kaggle_command == "notebook":
        from trainsvc_launchers._notebook import write_notebook

        write_notebook(args.out)
        out.success("KAGGLE", f"notebook written to {args.out}")
        return ExitCode.OK
    creds = find_kaggle_credentials(args.env_file)
    if creds is None:
        out.error(
            "KAGGLE",
            "no Kaggle credentials: set KAGGLE_API_TOKEN or KAGGLE_USERNAME/KAGGLE_KEY (environment or .env)",
        )
        return ExitCode.ERROR
    if args.kaggle_command == "datasets":
        return _datasets(args, out, creds)
    cfg = _load_config(args.config, out, "KAGGLE")
    if cfg is None:
        return ExitCode.ERROR
    from trainsvc_launchers._kaggle_flow import KaggleFlow, _wants_next
    from trainsvc_launchers._kaggle_kernel import KaggleSpec

    if args.kaggle_command == "monitor" and args.background:
        return _background(args, out, cfg)
    try:
        service = KaggleService(creds)
        spec = KaggleSpec.from_dict(
            cfg.kaggle, owner=service.username or os.environ.get("KAGGLE_USERNAME")
        )
    except KaggleError as exc:
        out.error("KAGGLE", str(exc))
        return ExitCode.ERROR
    except ConfigError as exc:
        for err in exc.errors:
            out.error("KAGGLE", f"config: {err}", field=err.field)
        return ExitCode.ERROR
    state_dir = args.state_dir or Path(".trainsvc") / "kaggle" / spec.slug
    flow = KaggleFlow(cfg, spec, service, state_dir, out)
    try:
        if args.kaggle_command == "submit":
            state = flow.load()
            if args.next:
                if state is None or not _wants_next(state):
                    out.error(
                        "KAGGLE",
                        "--next needs a finished session that ended before the step budget",
                    )
                    return ExitCode.ERROR
                return flow.chain(state)
            return flow.submit(resubmit=args.resubmit)
        if args.kaggle_command == "monitor":
            return flow.monitor(
                args.interval, args.max_hours, chain=args.chain, max_polls=args.max_polls
            )
        if args.kaggle_command == "status":
            return _status(flow, out)
        return _output(flow, out)
    except KaggleError as exc:
        out.error("KAGGLE", str(exc))
        return ExitCode.ERROR


def _background(args: argparse.Namespace, out: Reporter, cfg: LaunchConfig) -> ExitCode:
    from trainsvc_launchers._background import spawn_detached

    argv = [a for a in args.argv if a != "--background"]
    slug = str(cfg.kaggle.get("slug", "run"))
    state_dir = args.state_dir or Path(".trainsvc") / "kaggle" / slug
    log = state_dir / "monitor.log"
    from trainsvc_launchers._kaggle_flow import chain_lock

    with chain_lock(state_dir) as holder:  # say so now, not only in the new monitor's log
        if holder is not None:
            out.error(
                "KAGGLE", f"a monitor is already running for this chain ({holder}); log: {log}"
            )
            return ExitCode.ERROR
    pid = spawn_detached(argv, log)
    write_json_atomic(state_dir / "monitor.pid.json", {"pid": pid, "log": str(log)})
    out.success(
        "KAGGLE",
        f"monitor running in the background (pid {pid}); log: {log}",
        pid=pid,
        log=str(log),
    )
    out.info("KAGGLE", f"follow it with: tail -f {log}   or read {state_dir / 'state.json'}")
    return ExitCode.OK


def _status(flow: object, out: Reporter) -> ExitCode:
    from dataclasses import asdict

    from trainsvc_launchers._kaggle_flow import KaggleFlow

    assert isinstance(flow, KaggleFlow)
    quota = flow.kaggle.quota()
    if quota is not None:
        out.info(
            "KAGGLE",
            f"GPU quota: {quota.remaining_hours:.1f} h left of {quota.total_hours:.1f} h",
            quota=asdict(quota),
        )
    state = flow.load()
    if state is None:
        out.info("KAGGLE", "nothing submitted yet")
        return ExitCode.OK
    if state.status in ("waiting_training", "in_progress"):
        flow.poll(state)
    out.info(
        "KAGGLE",
        f"{state.kernel_id}: {state.status} (Kaggle: {state.kaggle_status}), step {state.steps_done}/{state.step_budget}, "
        f"next action: {state.next_action}",
        state=asdict(state),
    )
    return ExitCode.ERROR if state.status == "error" else ExitCode.OK


def _output(flow: object, out: Reporter) -> ExitCode:
    from trainsvc_launchers._kaggle_flow import KaggleFlow

    assert isinstance(flow, KaggleFlow)
    state = flow.load()
    if state is None:
        out.error("KAGGLE", "nothing submitted yet")
        return ExitCode.ERROR
    dest = flow.state_dir / "output" / f"s{state.session}"
    files, _ = flow.kaggle.download_output(state.kernel_id, dest)
    out.success(
        "KAGGLE",
        f"{len(files)} files of {state.kernel_id} in {dest}",
        files=[str(f) for f in files],
    )
    return ExitCode.OK


def _datasets(args: argparse.Namespace, out: Reporter, creds: object) -> ExitCode:
    import tempfile

    from trainsvc_launchers._credentials import KaggleCredentials
    from trainsvc_launchers._kaggle_api import KaggleError, KaggleService

    assert isinstance(creds, KaggleCredentials)
    wheels = sorted(args.wheels_dir.glob("*.whl"))
    if not wheels:
        out.error(
            "KAGGLE-DATASETS",
            f"no .whl files in {args.wheels_dir}: build them with `uv build --all-packages -o {args.wheels_dir}`",
        )
        return ExitCode.ERROR
    owner, _, slug = args.dataset.partition("/")
    if not owner or not slug:
        out.error("KAGGLE-DATASETS", f"--dataset must be owner/slug, got {args.dataset!r}")
        return ExitCode.ERROR
    with tempfile.TemporaryDirectory(prefix="trainsvc-wheels-") as tmp:
        folder = Path(tmp)
        for wheel in wheels:
            shutil.copy2(wheel, folder / wheel.name)
        # ASCII-only JSON: the kaggle client reads this file in the locale's encoding.
        meta = {"id": args.dataset, "title": args.title or slug, "licenses": [{"name": "other"}]}
        (folder / "dataset-metadata.json").write_text(
            json.dumps(meta, ensure_ascii=True), encoding="utf-8"
        )
        try:
            service = KaggleService(creds)
            exists = service.dataset_exists(args.dataset)
            url = service.create_dataset(
                folder, new_version=exists, notes=f"{len(wheels)} wheels from trainsvc-launch"
            )
        except KaggleError as exc:
            out.error("KAGGLE-DATASETS", str(exc))
            return ExitCode.ERROR
    what = "a new version of" if exists else "new dataset"
    out.success(
        "KAGGLE-DATASETS",
        f"uploaded {len(wheels)} wheels to {what} {args.dataset}: {url}",
        wheels=[w.name for w in wheels],
        new_version=exists,
    )
    out.info("KAGGLE-DATASETS", f'set kaggle.wheels_dataset = "{args.dataset}" to install offline')
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``trainsvc-launch``; returns the exit code."""
    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv[:1] == ["distributed"]:
        from trainsvc_launchers.distributed import main as distributed_main

        return distributed_main(argv[1:])
    args = build_parser().parse_args(argv)
    args.argv = argv
    out = Reporter(json_mode=args.json)
    if args.command == "preflight":
        from trainsvc_launchers._preflight import run_preflight

        ok = run_preflight(
            args.target, args.config, out, data_dir=args.data_dir, env_file=args.env_file
        )
        return int(ExitCode.OK if ok else ExitCode.ERROR)
    if args.command == "kaggle":
        return int(_kaggle(args, out))
    if args.command in ("status", "logs", "stop", "autostart"):
        from trainsvc_launchers._lifecycle import lifecycle

        return int(lifecycle(args, out))
    from trainsvc_launchers._launch import launch

    return int(launch(args, out))
