"""trainsvc-traj: report on, export, judge and archive windows of recorded trajectories."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ._art import read_jsonl, read_parquet, write_jsonl, write_parquet
from ._db import DEFAULT_URL, parse_url
from ._errors import TrajectoryError
from ._export import window_groups
from ._judges import DEFAULT_RUBRIC, Judge, LLMJudge, RuleJudge, judge_groups
from ._quality import QualityThresholds, quality_report
from ._store import Store

DB_HELP = f"store URL: sqlite:///path.db, a path, or postgresql://... (default $TRAINSVC_TRAJ_DB or {DEFAULT_URL})"


def _fmt(path: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    return "jsonl" if path.endswith((".jsonl", ".json")) else "parquet"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trainsvc-traj",
        description="Recorded agent trajectories: windows, data quality, ART export, judges.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser, *, db: bool = True) -> None:
        if db:
            sp.add_argument(
                "--db", default=os.environ.get("TRAINSVC_TRAJ_DB", DEFAULT_URL), help=DB_HELP
            )
        sp.add_argument("--json", action="store_true", help="machine-readable output")

    w = sub.add_parser("windows", help="list the windows in the store with counts by status")
    common(w)

    r = sub.add_parser("report", help="data-quality report of one window (exit 1 below threshold)")
    r.add_argument("--window", "-w", required=True, help="window id (see `windows`)")
    r.add_argument(
        "--min-complete", type=float, default=0.8, help="min fraction of completed trajectories"
    )
    r.add_argument(
        "--min-llm-steps", type=float, default=0.5, help="min fraction of steps with an LLM call"
    )
    r.add_argument(
        "--min-reward-coverage",
        type=float,
        default=0.9,
        help="min fraction of completed steps with a reward",
    )
    r.add_argument(
        "--max-duplicates", type=float, default=0.1, help="max fraction of duplicate trajectories"
    )
    r.add_argument(
        "--min-groups", type=int, default=1, help="min number of complete scenario groups"
    )
    r.add_argument(
        "--min-group-size", type=int, default=2, help="trajectories a complete group needs"
    )
    common(r)

    e = sub.add_parser("export", help="export a window's scenario groups in ART's formats")
    e.add_argument("--window", "-w", required=True, help="window id")
    e.add_argument("--out", "-o", required=True, help="output file (.parquet or .jsonl)")
    e.add_argument("--format", choices=("parquet", "jsonl"), help="default: from --out's suffix")
    e.add_argument("--min-group-size", type=int, default=2, help="trajectories a group needs")
    common(e)

    j = sub.add_parser(
        "judge", help="score exported groups with a judge (RULER-style, relative in [0, 1])"
    )
    j.add_argument("--in", dest="inp", required=True, help="ART file to read (.parquet or .jsonl)")
    j.add_argument("--out", "-o", required=True, help="judged file to write (.parquet or .jsonl)")
    j.add_argument(
        "--judge", choices=("rule", "llm"), default="rule", help="rule (offline, default) or llm"
    )
    j.add_argument(
        "--base-url", help="llm: OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1"
    )
    j.add_argument("--model", help="llm: judge model name")
    j.add_argument("--rubric", help="llm: rubric text, or @file to read it from a file")
    j.add_argument("--timeout", type=float, default=60.0, help="llm: seconds per request")
    j.add_argument("--retries", type=int, default=2, help="llm: retries per group")
    j.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="llm: env var holding the API key"
    )
    common(j, db=False)

    a = sub.add_parser(
        "archive", help="archive a window to an fsspec URL, verify it, then prune it"
    )
    a.add_argument("--window", "-w", required=True, help="window id")
    a.add_argument("--to", default=".trainsvc/trajectory-archive", help="directory or fsspec URL")
    a.add_argument("--keep", action="store_true", help="archive only, do not prune")
    common(a)
    return p


def _progress_line(verb: str) -> Callable[[int, int], None] | None:
    """A ``progress(done, total)`` that redraws one stderr line, when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done == total else ""
        print(f"\r{verb} {done}/{total} groups", end=end, file=sys.stderr, flush=True)

    return show


def _emit(args: argparse.Namespace, data: dict[str, Any], human: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else human)


def _run(args: argparse.Namespace) -> int:
    if args.command == "judge":
        groups = (
            read_parquet(args.inp) if _fmt(args.inp, None) == "parquet" else read_jsonl(args.inp)
        )
        judge: Judge
        if args.judge == "llm":
            if not args.base_url or not args.model:
                raise TrajectoryError("--judge llm needs --base-url and --model")
            rubric: str | None = args.rubric
            if rubric and rubric.startswith("@"):
                rubric = Path(rubric[1:]).read_text(encoding="utf-8")
            judge = LLMJudge(
                args.base_url,
                args.model,
                rubric=rubric or DEFAULT_RUBRIC,
                api_key=os.environ.get(args.api_key_env),
                timeout_s=args.timeout,
                max_retries=args.retries,
            )
        else:
            judge = RuleJudge()
        result = judge_groups(judge, groups, progress=_progress_line("judged"))
        out = result.groups
        (write_parquet if _fmt(args.out, None) == "parquet" else write_jsonl)(out, args.out)
        rep = result.report
        human = (
            f"judged {rep.judged}/{rep.groups} groups with the {rep.judge} judge -> {args.out}\n"
            f"calls {rep.calls} (failed {rep.failed_calls}), latency p50 {rep.latency_s_p50:.3f}s "
            f"max {rep.latency_s_max:.3f}s, tokens {rep.prompt_tokens}+{rep.completion_tokens}, "
            f"cost ${rep.cost_usd:.4f}"
        )
        for s in rep.skips:
            human += f"\nSKIPPED group {s['group_index']}: {s['reason']}"
        _emit(args, rep.to_dict(), human)
        return 0
    dialect, target = parse_url(args.db)
    if dialect == "sqlite" and not Path(target).exists():
        raise TrajectoryError(f"--db: no store at {target} (record into it first, or pass --db)")
    with Store(args.db) as store:
        if args.command == "windows":
            ws = store.windows()
            data = {"windows": [{"window_id": w.window_id, **w.counts} for w in ws]}
            lines = [
                f"{'window':<28} {'open':>6} {'completed':>10} {'failed':>7} {'abandoned':>10}"
            ]
            lines += [
                f"{w.window_id:<28} {w.counts['open']:>6} {w.counts['completed']:>10} "
                f"{w.counts['failed']:>7} {w.counts['abandoned']:>10}"
                for w in ws
            ]
            _emit(args, data, "\n".join(lines))
            return 0
        if args.command == "report":
            th = QualityThresholds(
                min_complete_fraction=args.min_complete,
                min_llm_step_fraction=args.min_llm_steps,
                min_reward_coverage=args.min_reward_coverage,
                max_duplicate_fraction=args.max_duplicates,
                min_complete_groups=args.min_groups,
                min_group_size=args.min_group_size,
            )
            q = quality_report(store, args.window, th)
            human = "\n".join(
                [
                    f"window {q.window_id}: {q.trajectories} trajectories "
                    + ", ".join(f"{k} {v}" for k, v in q.by_status.items()),
                    f"  complete            {q.complete_fraction:7.1%}",
                    f"  steps with LLM call {q.llm_step_fraction:7.1%}  ({q.steps_with_llm_calls}/{q.steps})",
                    f"  reward coverage     {q.reward_coverage:7.1%}  ({q.rewarded_steps} rewarded)",
                    f"  provider accesses   {q.provider_accesses:7d}  ({q.steps_with_provider_access} steps)",
                    f"  duplicates          {q.duplicates:7d}  ({q.duplicate_fraction:.1%})",
                    f"  complete groups     {q.complete_groups:7d}  of {q.scenarios} scenarios",
                    "PASS" if q.passed else "FAIL: " + "; ".join(q.failures),
                ]
            )
            _emit(args, q.to_dict(), human)
            return 0 if q.passed else 1
        if args.command == "export":
            groups = window_groups(store, args.window, min_group_size=args.min_group_size)
            fmt = _fmt(args.out, args.format)
            n = (write_parquet if fmt == "parquet" else write_jsonl)(groups, args.out)
            ntraj = sum(len(g.trajectories) for g in groups)
            _emit(
                args,
                {
                    "out": args.out,
                    "format": fmt,
                    "groups": len(groups),
                    "trajectories": ntraj,
                    "rows": n,
                },
                f"exported {len(groups)} groups ({ntraj} trajectories) of {args.window} to {args.out} ({fmt})",
            )
            return 0
        if args.command == "archive":
            res = store.archive_window(args.window, args.to, prune=not args.keep)
            _emit(
                args,
                asdict(res),
                f"archived {res.trajectories} trajectories ({res.rows} rows, {res.bytes} bytes) "
                f"to {res.url}; verified{'; pruned' if res.pruned else ''}",
            )
            return 0
    raise AssertionError(args.command)  # pragma: no cover


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit codes: 0 success, 1 error (or a window below the quality threshold)."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (TrajectoryError, OSError, ValueError) as e:
        print(f"trainsvc-traj: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
