"""``trainsvc-othello``: train, evaluate, monitor and describe the Othello engine from a terminal.

Exit codes: 0 success (including a graceful Ctrl+C stop), 1 error.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from trainsvc_engine._engine import (
    CheckpointManager,
    EngineError,
    Evaluator,
    TrainingManager,
    __version__,
    cpu_variant,
    cpu_variants,
)
from trainsvc_engine.presets import PRESETS

PROGRESS_FILE = "progress.jsonl"
DEFAULT_DIR = Path(".trainsvc") / "othello"
_SPARK = "▁▂▃▄▅▆▇█"


# Learner settings of `train`: engine field, type, help (the flag is --field-with-dashes).
_LEARNER_FLAGS: tuple[tuple[str, type, str], ...] = (
    (
        "td_heuristic_games",
        float,
        "td, ctdl: fraction of TD games played against the WPC heuristic (0 = self-play only)",
    ),
    ("es_parents", int, "es: parents kept per generation (mu)"),
    ("es_offspring", int, "es: offspring per generation (lambda)"),
    ("es_sigma", float, "es: standard deviation of the Gaussian mutation"),
    ("es_sigma_decay", int, "es: the mutation shrinks as d / (d + generation) (0 = constant)"),
    ("es_fitness_pairs", int, "es: pairs of games against the heuristic per fitness evaluation"),
    (
        "es_fitness_pairs_max",
        int,
        "es: the fitness sample grows as the search step shrinks, up to this (0 = fixed)",
    ),
    (
        "es_fitness_step",
        float,
        "es: key the growing sample on the step relative to the weights, from this one (0 = off)",
    ),
    (
        "es_fitness_margin",
        float,
        "es: weight of the mean disc difference / 64 in the fitness (0 = points only)",
    ),
    (
        "es_random_pairs",
        int,
        "es: pairs of games against the random player per fitness evaluation (0 = none)",
    ),
    (
        "es_elite_pairs",
        int,
        "es: hand over the best network met, compared on this many fresh pairs (0 = off)",
    ),
    ("es_elite_every", int, "es: generations between elite comparisons"),
    (
        "es_mean_rate",
        float,
        "es sep-cma: the mean moves this fraction of the way to the recombined candidates",
    ),
    (
        "es_normalize",
        float,
        "es sep-cma: cap on the root mean square of the mean (0 = none)",
    ),
    (
        "es_split_games",
        int,
        "es sep-cma with --phases above 1: the phases share their tables until this many games,"
        " then each is searched on its own (0 = on its own from the start)",
    ),
    (
        "es_portfolio",
        int,
        "es: independent searches raced side by side until --es-portfolio-games, then the best"
        " goes on alone (1 = one search)",
    ),
    (
        "es_portfolio_games",
        int,
        "es with --es-portfolio above 1: the run's games at which the race ends",
    ),
    (
        "es_portfolio_pairs",
        int,
        "es with --es-portfolio above 1: pairs of League games against the heuristic each"
        " search's network plays when the race ends",
    ),
    (
        "es_strategy",
        str,
        "es: plus (isotropic mutation, the default) or sep-cma (separable CMA-ES)",
    ),
    ("ctdl_population", int, "ctdl: individuals (even)"),
    ("ctdl_td_games", int, "ctdl: self-play TD games per individual per generation"),
    ("ctdl_match_pairs", int, "ctdl: pairs of games each two individuals play per generation"),
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trainsvc-othello",
        description="Train, evaluate and monitor the trainsvc Othello engine.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train", help="train the weights (TD, coevolutionary TD or evolution) with checkpoints"
    )
    t.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="checkpoint directory")
    t.add_argument("--games", type=int, default=100_000, help="target number of games")
    t.add_argument(
        "--checkpoint-interval", type=int, default=10_000, help="games between checkpoints"
    )
    t.add_argument(
        "--callback-interval", type=int, default=1_000, help="games between progress reports"
    )
    t.add_argument(
        "--depth", type=int, default=1, help="search depth of the moves played (1 = greedy)"
    )
    t.add_argument(
        "--target-depth",
        type=int,
        choices=(1, 2),
        default=None,
        help="what a position learns towards: 2 = its own 2-ply minimax value (the default),"
        " 1 = TD(lambda) along the game played",
    )
    t.add_argument("--epsilon", type=float, default=0.1, help="exploration rate at the start")
    t.add_argument(
        "--epsilon-end", type=float, default=None, help="exploration rate at the end of the decay"
    )
    t.add_argument("--epsilon-decay-games", type=int, default=100_000, help="games of linear decay")
    t.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (plain TD: divided by the active features)",
    )
    t.add_argument(
        "--lambda", dest="lambda_", type=float, default=None, help="TD(lambda) trace decay"
    )
    t.add_argument(
        "--learner",
        choices=("td", "ctdl", "es"),
        default=None,
        help="td: self-play TD (the default); ctdl: coevolutionary TD (a population of TD"
        " learners ranked by round robin); es: (mu+lambda) evolution strategy against the"
        " League heuristic",
    )
    t.add_argument(
        "--pattern-set",
        default=None,
        help="pattern set (default, small, straight2 = all straight 2-tuples, rect2x2, ...)",
    )
    t.add_argument("--phases", type=int, default=None, help="phases with their own tables")
    t.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="start from a measured configuration, which the other flags given override:"
        " league = es (separable CMA-ES) over every 2x2 square, about 0.97 against the"
        " League's heuristic after 27 M games (--games 27000000: about 900 CPU seconds,"
        " 7-8 minutes on 2 cores; docs/othello-engine.md)",
    )
    for flag, kind, what in _LEARNER_FLAGS:
        t.add_argument(f"--{flag.replace('_', '-')}", type=kind, default=None, help=what)
    t.add_argument(
        "--es-recombine",
        action="store_true",
        default=None,
        help="es: offspring mutate the mean of the parents, (mu/mu + lambda)",
    )
    t.add_argument("--threads", type=int, default=0, help="worker threads (0 = all cores)")
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --dir"
    )
    t.add_argument("--compress", action="store_true", help="write zstd-compressed checkpoints")
    t.add_argument("--log-file", type=Path, default=None, help="log file (default: DIR/train.log)")
    t.add_argument("--json", action="store_true", help="print the result as JSON")

    e = sub.add_parser(
        "evaluate", help="League score against random, heuristic and fixed engine players"
    )
    e.add_argument("checkpoint", type=Path, help="a checkpoint file or a checkpoint directory")
    e.add_argument("--pairs", type=int, default=500, help="pairs of games per opponent")
    e.add_argument(
        "--depth", type=int, default=1, help="engine search depth (1 = greedy, as in the League)"
    )
    e.add_argument(
        "--exact-empties",
        type=int,
        default=0,
        help="solve the rest of each game exactly from this many empty squares"
        " (0 = never, as in the League; at most 16)",
    )
    e.add_argument(
        "--against",
        type=Path,
        action="append",
        default=[],
        help="also play this engine checkpoint (file or directory), greedy at 1 ply unless"
        " --against-depth: a stronger fixed opponent than the heuristic (repeatable)",
    )
    e.add_argument(
        "--against-depth", type=int, default=1, help="search depth of the --against engines"
    )
    e.add_argument("--seed", type=int, default=0, help="random seed")
    e.add_argument("--json", action="store_true", help="print the results as JSON")

    i = sub.add_parser("info", help="version and the CPU variant the engine runs on")
    i.add_argument("--json", action="store_true", help="print the information as JSON")

    m = sub.add_parser("monitor", help="live view of the training curves of a run directory")
    m.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="checkpoint directory being trained"
    )
    m.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    m.add_argument("--once", action="store_true", help="print the current view once and exit")
    m.add_argument("--json", action="store_true", help="print the recorded points as JSON and exit")
    return p


def _logger(path: Path, console: bool) -> logging.Logger:
    log = logging.getLogger("trainsvc_othello")
    log.handlers.clear()
    log.setLevel(logging.INFO)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    fh = logging.FileHandler(path, encoding="utf-8")
    fh.setFormatter(fmt)
    log.addHandler(fh)
    if console:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        log.addHandler(sh)
    log.propagate = False
    return log


def _train(args: argparse.Namespace, out: Console) -> int:
    config: dict[str, Any] = {
        **(PRESETS[args.preset] if args.preset else {}),
        "threads": args.threads,
        "seed": args.seed,
        "epsilon_decay_games": args.epsilon_decay_games,
    }
    if args.lr is not None:
        config["learning_rate"] = args.lr
    if args.lambda_ is not None:
        config["lambda"] = args.lambda_
    if args.target_depth is not None:
        config["target_depth"] = args.target_depth
    if args.epsilon_end is not None:
        config["epsilon_end"] = args.epsilon_end
    for field, value in (
        ("learner", args.learner),
        ("pattern_set", args.pattern_set),
        ("n_phases", args.phases),
        ("es_recombine", args.es_recombine),
        *((f, getattr(args, f)) for f, _, _ in _LEARNER_FLAGS),
    ):
        if value is not None:
            config[field] = value
    log = _logger(args.log_file or args.dir / "train.log", console=not args.json)
    # Ctrl+C (SIGINT) is this command's to handle, as in the trainer's and lm's
    # CLIs, also when its parent ignores SIGINT (a background job of a
    # non-interactive shell, a test runner's worker): the disposition is inherited.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    manager = TrainingManager(args.dir, compress=args.compress)
    progress_path = args.dir / PROGRESS_FILE

    def on_progress(games: int, stone_diff: float, win_rate: float, elapsed: float) -> None:
        point = {
            "games": games,
            "stone_diff": stone_diff,
            "win_rate": win_rate,
            "elapsed_s": elapsed,
        }
        with progress_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(point) + "\n")
        log.info(
            "games=%d stone_diff=%.2f black_win_rate=%.3f elapsed=%.1fs",
            games,
            stone_diff,
            win_rate,
            elapsed,
        )

    manager.set_progress_callback(on_progress)
    epsilon_start = args.epsilon
    columns = (
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    interrupted = False
    # Ctrl+C from the start on, at any instant, stops with an emergency checkpoint:
    # `wait` saves one itself when the interrupt lands inside it; anywhere else
    # (the instant after `start` returns, the progress bar, the log line) the
    # handler does. An interrupt that escaped would leave the training thread
    # running, and its progress callbacks, into the interpreter's shutdown.
    try:
        manager.start(
            args.games,
            checkpoint_interval=args.checkpoint_interval,
            callback_interval=args.callback_interval,
            search_depth=args.depth,
            resume=args.resume,
            epsilon_start=epsilon_start,
            epsilon_end=args.epsilon_end if args.epsilon_end is not None else epsilon_start,
            **config,
        )
        log.info("training to %d games in %s", args.games, args.dir)
        with Progress(
            *columns, console=Console(stderr=True), disable=args.json, transient=False
        ) as bar:
            task = bar.add_task("train", total=args.games, completed=manager.games, info="")
            while manager.wait(timeout=0.25) is None:
                st = manager.statistics()
                info = f"{st.games_per_second:,.0f} games/s  diff {st.rolling_stone_diff:+.2f}"
                bar.update(task, completed=st.games, info=info)
            bar.update(task, completed=manager.games)
    except KeyboardInterrupt:
        interrupted = True
        if manager.state == "training":
            manager.stop(emergency=True)
    if interrupted:
        saved = CheckpointManager(args.dir).list()
        where = saved[-1].path if saved else "(none)"
        log.info("interrupted: saved %s and stopped", where)
        if args.json:
            print(json.dumps({"interrupted": True, "games": manager.games, "checkpoint": where}))
        else:
            out.print(f"[yellow]Interrupted[/]: saved {where} after {manager.games} games.")
        return 0
    result = manager.result
    if result is None:
        out.print("[red]training ended without a result[/]", manager.last_error or "")
        return 1
    summary = {
        "games": result.games,
        "final_stone_diff": result.final_stone_diff,
        "black_rate": result.black_rate,
        "white_rate": result.white_rate,
        "draw_rate": result.draw_rate,
        "elapsed_s": result.elapsed_s,
        "games_per_second": result.games_per_second,
        "errors": result.errors,
        "reason": result.reason,
        "directory": str(args.dir),
    }
    log.info("finished: %s", summary)
    if args.json:
        print(json.dumps(summary))
    else:
        table = Table(title="training result")
        table.add_column("field")
        table.add_column("value", justify="right")
        for k, v in summary.items():
            table.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
        out.print(table)
    return 0 if result.reason == "target" else 1


def _evaluator_for(path: Path) -> Evaluator:
    if path.is_dir():
        return CheckpointManager(path).load_latest().evaluator()
    return Evaluator(path)


def _evaluate(args: argparse.Namespace, out: Console) -> int:
    ev = _evaluator_for(args.checkpoint)
    results = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        console=Console(stderr=True),
        disable=args.json,
    ) as bar:
        opponents: list[tuple[str, str | Evaluator]] = [
            ("random", "random"),
            ("heuristic", "heuristic"),
            *((str(p), _evaluator_for(p)) for p in args.against),
        ]
        task = bar.add_task("playing League games", total=len(opponents))
        for label, opponent in opponents:
            result = ev.league(
                opponent,
                pairs=args.pairs,
                depth=args.depth,
                seed=args.seed,
                exact_empties=args.exact_empties,
                opponent_depth=args.against_depth,
            )
            result["opponent"] = label
            results.append(result)
            bar.advance(task)
    if args.json:
        settings = {"depth": args.depth, "exact_empties": args.exact_empties}
        print(json.dumps({"checkpoint": str(args.checkpoint), **settings, "results": results}))
        return 0
    player = f"depth {args.depth}"
    if args.exact_empties:
        player += f", exact from {args.exact_empties} empties"
    table = Table(
        title=f"Othello League score of {args.checkpoint} ({player};"
        " 10% random moves, colours swapped)"
    )
    for col in ("opponent", "games", "wins", "draws", "losses", "score", "95% CI"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            r["opponent"],
            str(r["games"]),
            str(r["wins"]),
            str(r["draws"]),
            str(r["losses"]),
            f"{r['score']:.3f}",
            f"± {r['ci95']:.3f}",
        )
    out.print(table)
    return 0


def _read_points(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    points = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            points.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written
    return points


def sparkline(values: Sequence[float], width: int = 60) -> str:
    """A one-line chart of ``values`` (the last ``width`` of them)."""
    vals = list(values)[-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(_SPARK[int((v - lo) / span * (len(_SPARK) - 1))] for v in vals)


def _monitor_view(directory: Path) -> Table:
    points = _read_points(directory / PROGRESS_FILE)
    table = Table(title=f"training of {directory}")
    table.add_column("metric")
    table.add_column("latest", justify="right")
    table.add_column("curve")
    if not points:
        table.add_row("games", "0", "waiting for progress…")
        return table
    last = points[-1]
    table.add_row("games", f"{last['games']:,}", sparkline([p["games"] for p in points]))
    table.add_row(
        "stone diff (B-W)",
        f"{last['stone_diff']:+.2f}",
        sparkline([p["stone_diff"] for p in points]),
    )
    table.add_row(
        "black win rate", f"{last['win_rate']:.3f}", sparkline([p["win_rate"] for p in points])
    )
    rate = last["games"] / last["elapsed_s"] if last["elapsed_s"] > 0 else 0.0
    table.add_row("games/s (avg)", f"{rate:,.0f}", "")
    saved = CheckpointManager(directory).list()
    table.add_row("checkpoints", str(len(saved)), saved[-1].path if saved else "")
    return table


def _monitor(args: argparse.Namespace, out: Console) -> int:
    if args.json:
        print(json.dumps(_read_points(args.dir / PROGRESS_FILE)))
        return 0
    if args.once:
        out.print(_monitor_view(args.dir))
        return 0
    try:
        with Live(_monitor_view(args.dir), console=out, refresh_per_second=4) as live:
            while True:
                time.sleep(args.interval)
                live.update(_monitor_view(args.dir))
    except KeyboardInterrupt:
        return 0


def _info(args: argparse.Namespace, out: Console) -> int:
    info = {
        "version": __version__,
        "cpu_variant": cpu_variant(),
        "cpu_variants": cpu_variants(),
        "module": str(Path(sys.modules["trainsvc_engine._engine"].__file__ or "")),
    }
    if args.json:
        print(json.dumps(info))
        return 0
    out.print(f"trainsvc-engine {info['version']}")
    out.print(f"CPU variant in use: [bold]{info['cpu_variant']}[/]")
    out.print(f"variants this CPU supports: {', '.join(info['cpu_variants'])}")
    out.print(f"module: {info['module']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trainsvc-othello``; returns the exit code."""
    args = _parser().parse_args(argv)
    out = Console()
    try:
        if args.command == "train":
            return _train(args, out)
        if args.command == "evaluate":
            return _evaluate(args, out)
        if args.command == "info":
            return _info(args, out)
        return _monitor(args, out)
    except (EngineError, OSError) as e:
        if getattr(args, "json", False):
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        else:
            Console(stderr=True).print(f"[red]error[/]: {type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
