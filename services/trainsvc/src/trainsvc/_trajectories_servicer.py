"""trainsvc.v1.TrajectoryService: the trajectory store's windows and data quality over gRPC.

A thin adapter over trainsvc-trajectories: each window's numbers are its own
`quality_report` (the same report as ``trainsvc-traj report --window W``), its
interval comes from `window_bounds`, and the windows from `Store.windows`. Only the
numbers the report does not have (mean reward, per-scenario counts, trajectories per
time bucket) are read here, with plain aggregate queries that run on SQLite and
PostgreSQL alike.

The store is the service's ``--trajectory-db``; it is opened on the first call (so a
PostgreSQL server that is down at start-up only fails the calls, with UNAVAILABLE,
until it is back). Without ``--trajectory-db`` every call is FAILED_PRECONDITION.
"""

from __future__ import annotations

import base64
import binascii
import math
import threading
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from google.protobuf.timestamp_pb2 import Timestamp
from trainsvc_api.v1 import trajectories_pb2 as tpb
from trainsvc_api.v1 import trajectories_pb2_grpc as tpb_grpc

from trainsvc._domain import (
    FailedPreconditionError,
    InvalidArgumentError,
    UnavailableError,
    echo,
)
from trainsvc._metrics import Metrics
from trainsvc._rpc import Context, unary_call

if TYPE_CHECKING:
    from trainsvc_trajectories import QualityReport, Store, WindowSummary

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
DEFAULT_BUCKET_S = 3600
MIN_BUCKET_S = 60
MAX_BUCKET_S = 7 * 86400
MAX_BUCKETS = 1000
"""The collection series holds at most this many buckets (the newest)."""
NO_STORE = (
    "this service has no trajectory store: start it with --trajectory-db URL "
    "(sqlite:///path.db or postgresql://...)"
)


def _time(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def quality_score(report: QualityReport) -> float:
    """In [0, 1]: the mean of the report's four fractions, duplicates counted against it."""
    if report.trajectories == 0:
        return 0.0
    parts = (
        report.complete_fraction,
        report.llm_step_fraction,
        report.reward_coverage,
        1.0 - report.duplicate_fraction,
    )
    return sum(parts) / len(parts)


def _page_token(window_id: str) -> str:
    return base64.urlsafe_b64encode(f"w1:{window_id}".encode()).decode()


def _parse_page_token(token: str) -> str:
    """The window id a page token continues after."""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeError, ValueError):
        text = ""
    if not text.startswith("w1:"):
        raise InvalidArgumentError(
            "page_token", f"is not a token this service gave out: {echo(token)}"
        )
    return text[3:]


def _summary_key(w: WindowSummary) -> tuple[Any, ...]:
    """What a window's report (and its share of the collection) depends on."""
    return (w.window_id, tuple(sorted(w.counts.items())), w.last_started_at)


class WindowStats:
    """Reads a store's windows with their quality reports (cached while a window is unchanged).

    A window's report depends only on its trajectories, and a trajectory changes what
    the report counts only when it ends (completed trajectories are written whole), so
    a window whose per-status counts and latest start are unchanged has the same
    report; the cache key is exactly that (and the collection series is kept while no
    window changed).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._reports: dict[str, tuple[tuple[Any, ...], QualityReport]] = {}
        self._collection: tuple[tuple[Any, ...], tuple[list[tpb.CollectionBucket], int]] | None
        self._collection = None
        self._lock = threading.Lock()

    def report(self, summary: WindowSummary) -> QualityReport:
        """The window's quality report under the default thresholds."""
        from trainsvc_trajectories import quality_report

        key = _summary_key(summary)
        with self._lock:
            cached = self._reports.get(summary.window_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        report = quality_report(self.store, summary.window_id)
        with self._lock:
            self._reports[summary.window_id] = (key, report)
        return report

    def extras(
        self, window_ids: list[str]
    ) -> tuple[dict[str, tuple[float | None, int]], dict[str, list[tuple[str, int, int]]]]:
        """Per window: (mean reward of completed trajectories, how many have a reward), and
        (scenario, trajectories, completed) per scenario."""
        if not window_ids:
            return {}, {}
        marks = ", ".join("?" for _ in window_ids)
        db = self.store.db
        rewards = {
            str(r["window_id"]): (
                None if r["mean_reward"] is None else float(r["mean_reward"]),
                int(r["n"]),
            )
            for r in db.query(
                "SELECT window_id, AVG(reward) AS mean_reward, COUNT(reward) AS n "
                f"FROM trajectories WHERE status = 'completed' AND window_id IN ({marks}) "
                "GROUP BY window_id",
                window_ids,
            )
        }
        scenarios: dict[str, dict[str, list[int]]] = defaultdict(dict)
        for r in db.query(
            "SELECT window_id, scenario_id, status, COUNT(*) AS n FROM trajectories "
            f"WHERE window_id IN ({marks}) GROUP BY window_id, scenario_id, status",
            window_ids,
        ):
            counts = scenarios[str(r["window_id"])].setdefault(r["scenario_id"] or "", [0, 0])
            counts[0] += int(r["n"])
            if r["status"] == "completed":
                counts[1] += int(r["n"])
        per_scenario = {
            w: [(s, n, done) for s, (n, done) in sorted(by.items())] for w, by in scenarios.items()
        }
        return rewards, per_scenario

    def collection(
        self, bucket_s: int, summaries: list[WindowSummary]
    ) -> tuple[list[tpb.CollectionBucket], int]:
        """Trajectories started per bucket (empty buckets included, the newest
        `MAX_BUCKETS`), and the store's total; kept while ``summaries`` (every window's
        counts by status and latest start) are unchanged."""
        key = (bucket_s, tuple(_summary_key(w) for w in summaries))
        with self._lock:
            cached = self._collection
        if cached is not None and cached[0] == key:
            return cached[1]
        result = self._count_collection(bucket_s)
        with self._lock:
            self._collection = (key, result)
        return result

    def _count_collection(self, bucket_s: int) -> tuple[list[tpb.CollectionBucket], int]:
        counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        total = 0
        for r in self.store.db.query("SELECT started_at, status FROM trajectories"):
            bucket = math.floor(float(r["started_at"]) / bucket_s)
            counts[bucket][0] += 1
            counts[bucket][1] += r["status"] == "completed"
            total += 1
        if not counts:
            return [], 0
        last = max(counts)
        first = max(min(counts), last - MAX_BUCKETS + 1)
        out = []
        for b in range(first, last + 1):
            n, done = counts.get(b, (0, 0))
            out.append(
                tpb.CollectionBucket(start_time=_time(b * bucket_s), trajectories=n, completed=done)
            )
        return out, total


def window_to_proto(
    summary: WindowSummary,
    report: QualityReport,
    reward: tuple[float | None, int],
    scenarios: list[tuple[str, int, int]],
) -> tpb.TrajectoryWindow:
    """The wire form of a window and its report."""
    from trainsvc_trajectories import window_bounds

    th = report.thresholds
    out = tpb.TrajectoryWindow(
        name=f"windows/{summary.window_id}",
        window_id=summary.window_id,
        first_start_time=_time(summary.first_started_at),
        last_start_time=_time(summary.last_started_at),
        trajectories=report.trajectories,
        trajectories_by_status=report.by_status,
        completed=report.by_status.get("completed", 0),
        complete_fraction=report.complete_fraction,
        steps=report.steps,
        steps_with_llm_calls=report.steps_with_llm_calls,
        llm_step_fraction=report.llm_step_fraction,
        rewarded_steps=report.rewarded_steps,
        reward_coverage=report.reward_coverage,
        llm_calls=report.llm_calls,
        provider_accesses=report.provider_accesses,
        duplicates=report.duplicates,
        duplicate_fraction=report.duplicate_fraction,
        rewarded_trajectories=reward[1],
        scenarios=report.scenarios,
        complete_groups=report.complete_groups,
        scenario_counts=[
            tpb.ScenarioCount(scenario_id=s, trajectories=n, completed=done)
            for s, n, done in scenarios
        ],
        quality_score=quality_score(report),
        passed=report.passed,
        failures=report.failures,
        thresholds=tpb.QualityThresholds(
            min_complete_fraction=th.min_complete_fraction,
            min_llm_step_fraction=th.min_llm_step_fraction,
            min_reward_coverage=th.min_reward_coverage,
            max_duplicate_fraction=th.max_duplicate_fraction,
            min_complete_groups=th.min_complete_groups,
            min_group_size=th.min_group_size,
        ),
    )
    if reward[0] is not None:
        out.mean_reward = reward[0]
    bounds = window_bounds(summary.window_id)
    if bounds is not None:
        out.start_time.CopyFrom(_time(bounds[0]))
        out.end_time.CopyFrom(_time(bounds[1]))
    return out


class TrajectoryServicer(tpb_grpc.TrajectoryServiceServicer):
    """Implements trainsvc.v1.TrajectoryService over the store at ``url`` ("" = none)."""

    def __init__(self, url: str, metrics: Metrics) -> None:
        self.url = url
        self.metrics = metrics
        self._stats: WindowStats | None = None
        self._lock = threading.Lock()

    def stats(self) -> WindowStats:
        """The store's `WindowStats`, opening the store on first use.

        Raises:
            FailedPreconditionError: no --trajectory-db, or trainsvc-trajectories missing.
            UnavailableError: the store cannot be opened now (tried again next call).
        """
        if not self.url:
            raise FailedPreconditionError(NO_STORE)
        with self._lock:
            if self._stats is None:
                try:
                    from trainsvc_trajectories import Store, StoreError
                except ImportError as exc:
                    raise FailedPreconditionError(
                        f"the trajectory store needs trainsvc-trajectories ({exc.name} is "
                        "missing): pip install 'trainsvc[serve]'"
                    ) from None
                try:
                    store = Store(self.url)
                except (StoreError, OSError) as exc:
                    raise UnavailableError(
                        f"the trajectory store {self.url} cannot be opened: {exc}"
                    ) from None
                self._stats = WindowStats(store)
            return self._stats

    def list_windows(self, request: tpb.ListWindowsRequest) -> tpb.ListWindowsResponse:
        """ListWindows without gRPC (checks the request, then reads the store)."""
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise InvalidArgumentError(
                "page_size", f"must be in 0..{MAX_PAGE_SIZE}, got {request.page_size}"
            )
        bucket_s = request.bucket_seconds or DEFAULT_BUCKET_S
        if not MIN_BUCKET_S <= bucket_s <= MAX_BUCKET_S:
            raise InvalidArgumentError(
                "bucket_seconds",
                f"must be 0 (one hour) or in {MIN_BUCKET_S}..{MAX_BUCKET_S}, got {bucket_s}",
            )
        after = _parse_page_token(request.page_token) if request.page_token else None
        size = request.page_size or DEFAULT_PAGE_SIZE
        stats = self.stats()
        summaries = stats.store.windows()
        newest_first = list(reversed(summaries))
        start = 0
        if after is not None:
            ids = [w.window_id for w in newest_first]
            if after not in ids:
                raise InvalidArgumentError(
                    "page_token", f"its window {echo(after)} is no longer in the store"
                )
            start = ids.index(after) + 1
        page = newest_first[start : start + size]
        rewards, scenarios = stats.extras([w.window_id for w in page])
        windows = [
            window_to_proto(
                w,
                stats.report(w),
                rewards.get(w.window_id, (None, 0)),
                scenarios.get(w.window_id, []),
            )
            for w in page
        ]
        collection, total = stats.collection(bucket_s, summaries)
        more = start + size < len(newest_first)
        return tpb.ListWindowsResponse(
            windows=windows,
            next_page_token=_page_token(page[-1].window_id) if more and page else "",
            collection=collection,
            bucket_seconds=bucket_s,
            total_trajectories=total,
        )

    async def ListWindows(  # noqa: N802
        self, request: tpb.ListWindowsRequest, context: Context
    ) -> tpb.ListWindowsResponse:
        return await unary_call(
            self.metrics, "ListWindows", context, lambda _t: self.list_windows(request)
        )

    def close(self) -> None:
        """Close the store (when it was opened)."""
        with self._lock:
            if self._stats is not None:
                self._stats.store.close()
                self._stats = None


__all__ = ["TrajectoryServicer", "WindowStats", "quality_score", "window_to_proto"]
