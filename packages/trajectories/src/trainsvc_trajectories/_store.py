"""The trajectory store: reads, crash recovery and archiving over SQLite or PostgreSQL."""

from __future__ import annotations

import gzip
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._db import DEFAULT_URL, Db
from ._errors import ArchiveVerificationError, StoreError, UnknownTrajectoryError
from ._schema import CHILD_TABLES

STATUSES = ("open", "completed", "failed", "abandoned")
ARCHIVE_FORMAT = "trainsvc-trajectories-archive"
ARCHIVE_VERSION = 1


@dataclass(frozen=True)
class StoredStep:
    """One recorded step: the state the agent saw, what it did and its reward."""

    step_index: int
    environment_state: Any
    action: Any
    reward: float | None
    started_at: float
    completed_at: float | None


@dataclass(frozen=True)
class StoredLLMCall:
    """One LLM call; ``messages`` is the full chat when the caller (or wrap_openai) gave it."""

    seq: int
    step_index: int | None
    model: str
    system_prompt: str | None
    user_prompt: str | None
    messages: list[dict[str, Any]] | None
    response: str | None
    temperature: float | None
    max_tokens: int | None
    purpose: str | None
    action_type: str | None
    latency: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    created_at: float


@dataclass(frozen=True)
class StoredProviderAccess:
    """One read of an outside data provider (prices, a feed, a search...)."""

    seq: int
    step_index: int | None
    provider: str
    data: Any
    purpose: str | None
    created_at: float


@dataclass(frozen=True)
class StoredTrajectory:
    """A trajectory as stored, with its steps, LLM calls and provider accesses."""

    trajectory_id: str
    recorder_id: str
    agent_id: str
    window_id: str
    scenario_id: str | None
    status: str
    metadata: dict[str, Any]
    final_metrics: dict[str, Any] | None
    reward: float | None
    error: str | None
    started_at: float
    ended_at: float | None
    n_steps: int
    steps: list[StoredStep] = field(default_factory=list)
    llm_calls: list[StoredLLMCall] = field(default_factory=list)
    provider_accesses: list[StoredProviderAccess] = field(default_factory=list)


@dataclass(frozen=True)
class WindowSummary:
    """How many trajectories a window holds, by status."""

    window_id: str
    counts: dict[str, int]
    first_started_at: float
    last_started_at: float

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class ArchiveResult:
    """Where a window went and what was pruned after the archive was verified."""

    window_id: str
    url: str
    trajectories: int
    rows: int
    bytes: int
    pruned: bool


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def process_start_token(pid: int) -> str:
    """Identifies a process beyond its pid (its start time on Linux), so pid reuse is seen."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, token: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not token or process_start_token(pid) in ("", token)


class Store:
    """Opens (and migrates) a store: a SQLite file by default, PostgreSQL by URL.

    Args:
        url: ``sqlite:///path.db`` (default ``.trainsvc/trajectories.db``), a plain path,
            or ``postgresql://user@host:port/dbname``.
    """

    def __init__(self, url: str | Path = DEFAULT_URL) -> None:
        self.url = str(url)
        self.db = Db(url)
        try:
            self.db.migrate()
        except BaseException:
            self.db.close()
            raise

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- crash recovery -------------------------------------------------------

    def abandon_orphans(self, *, stale_after_s: float = 120.0) -> list[str]:
        """Mark ``abandoned`` every open trajectory whose recorder is gone.

        A recorder is gone when it ran on this host and its process no longer exists,
        or (any host) when its heartbeat is older than ``stale_after_s``. Returns the
        ids of the trajectories marked.
        """
        host = socket.gethostname()
        now = time.time()
        marked: list[str] = []
        for rec in self.db.query(
            "SELECT recorder_id, host, pid, proc_start, heartbeat_at FROM recorders "
            "WHERE closed_at IS NULL"
        ):
            same_host_dead = rec["host"] == host and not process_alive(
                int(rec["pid"]), str(rec["proc_start"])
            )
            stale = now - float(rec["heartbeat_at"]) > stale_after_s
            if not (same_host_dead or stale):
                continue
            reason = (
                f"abandoned: recorder {rec['recorder_id']} (pid {rec['pid']} on {rec['host']}) "
                + ("exited without ending it" if same_host_dead else "stopped its heartbeat")
            )
            with self.db.transaction():
                ids = [
                    r["trajectory_id"]
                    for r in self.db.query(
                        "SELECT trajectory_id FROM trajectories "
                        "WHERE recorder_id = ? AND status = 'open'",
                        (rec["recorder_id"],),
                    )
                ]
                self.db.execute(
                    "UPDATE trajectories SET status = 'abandoned', error = ?, ended_at = ? "
                    "WHERE recorder_id = ? AND status = 'open'",
                    (reason, now, rec["recorder_id"]),
                )
                self.db.execute(
                    "UPDATE recorders SET closed_at = ? WHERE recorder_id = ?",
                    (now, rec["recorder_id"]),
                )
            marked.extend(ids)
        return marked

    # -- reads ----------------------------------------------------------------

    def windows(self) -> list[WindowSummary]:
        """Every window in the store, oldest first."""
        rows = self.db.query(
            "SELECT window_id, status, COUNT(*) AS n, MIN(started_at) AS first, "
            "MAX(started_at) AS last FROM trajectories GROUP BY window_id, status"
        )
        by: dict[str, dict[str, Any]] = {}
        for r in rows:
            w = by.setdefault(
                r["window_id"],
                {"counts": dict.fromkeys(STATUSES, 0), "first": r["first"], "last": r["last"]},
            )
            w["counts"][r["status"]] = int(r["n"])
            w["first"] = min(w["first"], r["first"])
            w["last"] = max(w["last"], r["last"])
        out = [
            WindowSummary(k, v["counts"], float(v["first"]), float(v["last"]))
            for k, v in by.items()
        ]
        return sorted(out, key=lambda w: (w.first_started_at, w.window_id))

    def trajectory(self, trajectory_id: str) -> StoredTrajectory:
        """One trajectory with its children.

        Raises:
            UnknownTrajectoryError: no trajectory has this id.
        """
        found = self._load("trajectory_id = ?", (trajectory_id,))
        if not found:
            raise UnknownTrajectoryError(
                trajectory_id, f"unknown trajectory id {trajectory_id!r} (not in the store)"
            )
        return found[0]

    def trajectories(
        self,
        window_id: str | None = None,
        *,
        status: str | None = None,
        ended_after: float | None = None,
    ) -> list[StoredTrajectory]:
        """Trajectories (with children) of a window and/or status, in start order;
        with ``ended_after``, only those that ended after that time (seconds since the epoch).
        """
        where: list[str] = []
        params: list[Any] = []
        if window_id is not None:
            where.append("window_id = ?")
            params.append(window_id)
        if ended_after is not None:
            where.append("ended_at > ?")
            params.append(float(ended_after))
        if status is not None:
            if status not in STATUSES:
                raise StoreError(f"status {status!r}: allowed {', '.join(STATUSES)}")
            where.append("status = ?")
            params.append(status)
        return self._load(" AND ".join(where) or "1 = 1", params)

    def _load(self, where: str, params: list[Any] | tuple[Any, ...]) -> list[StoredTrajectory]:
        heads = self.db.query(
            f"SELECT * FROM trajectories WHERE {where} ORDER BY started_at, trajectory_id", params
        )
        if not heads:
            return []
        sub = f"SELECT trajectory_id FROM trajectories WHERE {where}"
        steps: dict[str, list[StoredStep]] = {}
        for r in self.db.query(
            f"SELECT * FROM steps WHERE trajectory_id IN ({sub}) ORDER BY trajectory_id, step_index",
            params,
        ):
            steps.setdefault(r["trajectory_id"], []).append(
                StoredStep(
                    int(r["step_index"]),
                    _loads(r["environment_state"]),
                    _loads(r["action"]),
                    r["reward"],
                    r["started_at"],
                    r["completed_at"],
                )
            )
        calls: dict[str, list[StoredLLMCall]] = {}
        for r in self.db.query(
            f"SELECT * FROM llm_calls WHERE trajectory_id IN ({sub}) ORDER BY trajectory_id, seq",
            params,
        ):
            calls.setdefault(r["trajectory_id"], []).append(
                StoredLLMCall(
                    int(r["seq"]),
                    r["step_index"],
                    r["model"],
                    r["system_prompt"],
                    r["user_prompt"],
                    _loads(r["messages"]),
                    r["response"],
                    r["temperature"],
                    r["max_tokens"],
                    r["purpose"],
                    r["action_type"],
                    r["latency"],
                    r["prompt_tokens"],
                    r["completion_tokens"],
                    r["total_tokens"],
                    r["created_at"],
                )
            )
        accesses: dict[str, list[StoredProviderAccess]] = {}
        for r in self.db.query(
            f"SELECT * FROM provider_accesses WHERE trajectory_id IN ({sub}) "
            "ORDER BY trajectory_id, seq",
            params,
        ):
            accesses.setdefault(r["trajectory_id"], []).append(
                StoredProviderAccess(
                    int(r["seq"]),
                    r["step_index"],
                    r["provider"],
                    _loads(r["data"]),
                    r["purpose"],
                    r["created_at"],
                )
            )
        return [
            StoredTrajectory(
                trajectory_id=h["trajectory_id"],
                recorder_id=h["recorder_id"],
                agent_id=h["agent_id"],
                window_id=h["window_id"],
                scenario_id=h["scenario_id"],
                status=h["status"],
                metadata=_loads(h["metadata"]),
                final_metrics=_loads(h["final_metrics"]),
                reward=h["reward"],
                error=h["error"],
                started_at=h["started_at"],
                ended_at=h["ended_at"],
                n_steps=int(h["n_steps"]),
                steps=steps.get(h["trajectory_id"], []),
                llm_calls=calls.get(h["trajectory_id"], []),
                provider_accesses=accesses.get(h["trajectory_id"], []),
            )
            for h in heads
        ]

    # -- archiving ------------------------------------------------------------

    def _window_rows(self, window_id: str) -> dict[str, list[dict[str, Any]]]:
        tables = {
            "trajectories": self.db.query(
                "SELECT * FROM trajectories WHERE window_id = ? ORDER BY trajectory_id",
                (window_id,),
            )
        }
        sub = "SELECT trajectory_id FROM trajectories WHERE window_id = ?"
        for name in CHILD_TABLES:
            order = "step_index" if name == "steps" else "seq"
            tables[name] = self.db.query(
                f"SELECT * FROM {name} WHERE trajectory_id IN ({sub}) "
                f"ORDER BY trajectory_id, {order}",
                (window_id,),
            )
        return tables

    def archive_window(
        self, window_id: str, url: str = ".trainsvc/trajectory-archive", *, prune: bool = True
    ) -> ArchiveResult:
        """Copy a window's rows to ``<url>/window=<id>.json.gz`` (any fsspec URL), then prune.

        The archive is read back and compared with the database rows; only an identical
        copy lets the rows go, and they are deleted in one transaction that first checks
        that nothing changed since. A window that still has open trajectories is refused.

        Raises:
            StoreError: unknown window, or it still has open trajectories.
            ArchiveVerificationError: the copy read back differs; nothing was deleted.
        """
        import fsspec  # type: ignore[import-untyped]

        rows = self._window_rows(window_id)
        if not rows["trajectories"]:
            raise StoreError(f"window {window_id!r}: no trajectories in the store")
        still_open = [r["trajectory_id"] for r in rows["trajectories"] if r["status"] == "open"]
        if still_open:
            raise StoreError(
                f"window {window_id!r}: {len(still_open)} trajectories are still open "
                f"(e.g. {still_open[0]!r}); archive a window once it has ended"
            )
        doc = {
            "format": ARCHIVE_FORMAT,
            "version": ARCHIVE_VERSION,
            "window_id": window_id,
            "tables": rows,
        }
        payload = gzip.compress(json.dumps(doc, sort_keys=True).encode(), mtime=0)
        fs, base = fsspec.core.url_to_fs(url)
        fs.makedirs(base, exist_ok=True)
        safe = window_id.replace("/", "_")
        path = f"{base.rstrip('/')}/window={safe}.json.gz"
        tmp = f"{path}.tmp-{os.getpid()}"
        with fs.open(tmp, "wb") as f:
            f.write(payload)
        fs.mv(tmp, path)
        back = json.loads(gzip.decompress(fs.cat_file(path)))
        if back != doc:
            raise ArchiveVerificationError(
                f"window {window_id!r}: the archive at {path} differs from the database; "
                "nothing was pruned"
            )
        target = fs.unstrip_protocol(path) if "://" in url else str(Path(path).resolve())
        n_rows = sum(len(v) for v in rows.values())
        if prune:
            with self.db.transaction():
                if self._window_rows(window_id) != rows:
                    raise ArchiveVerificationError(
                        f"window {window_id!r} changed while it was archived; nothing was pruned"
                    )
                sub = "SELECT trajectory_id FROM trajectories WHERE window_id = ?"
                for name in CHILD_TABLES:
                    self.db.execute(
                        f"DELETE FROM {name} WHERE trajectory_id IN ({sub})", (window_id,)
                    )
                self.db.execute("DELETE FROM trajectories WHERE window_id = ?", (window_id,))
        return ArchiveResult(
            window_id, target, len(rows["trajectories"]), n_rows, len(payload), prune
        )

    def archive_older_than(
        self, age_s: float, url: str = ".trainsvc/trajectory-archive"
    ) -> list[ArchiveResult]:
        """Archive (and prune) every window whose newest trajectory started ``age_s`` ago or more."""
        cutoff = time.time() - age_s
        return [
            self.archive_window(w.window_id, url)
            for w in self.windows()
            if w.last_started_at <= cutoff and w.counts["open"] == 0
        ]


def read_archive(url: str) -> dict[str, list[dict[str, Any]]]:
    """The tables of one archived window (``window=<id>.json.gz`` at any fsspec URL)."""
    import fsspec

    with fsspec.open(url, "rb") as f:
        doc = json.loads(gzip.decompress(f.read()))
    if doc.get("format") != ARCHIVE_FORMAT or doc.get("version") != ARCHIVE_VERSION:
        raise StoreError(f"{url}: not a {ARCHIVE_FORMAT} v{ARCHIVE_VERSION} file")
    tables: dict[str, list[dict[str, Any]]] = doc["tables"]
    return tables
