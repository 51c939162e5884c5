"""The run registry: runs, events and the checkpoint index in SQLite.

Opened in WAL mode with ``synchronous=FULL``; every change is one transaction,
committed before the RPC that caused it is acknowledged, so a SIGKILL of the
service at any instant loses no acknowledged run, event or checkpoint.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trainsvc._domain import (
    AlreadyExistsError,
    CheckpointPolicy,
    CheckpointRecord,
    Event,
    EventType,
    NotFoundError,
    RegistryUnwritableError,
    RunRecord,
    RunSpec,
    State,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    resolved_config TEXT NOT NULL,
    state TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    steps_per_second REAL NOT NULL DEFAULT 0,
    state_message TEXT NOT NULL DEFAULT '',
    restarts INTEGER NOT NULL DEFAULT 0,
    latest_checkpoint TEXT NOT NULL DEFAULT '',
    metrics TEXT NOT NULL DEFAULT '{}',
    create_time REAL NOT NULL,
    start_time REAL NOT NULL DEFAULT 0,
    update_time REAL NOT NULL,
    end_time REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs(state, create_time);
CREATE TABLE IF NOT EXISTS events (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    type TEXT NOT NULL,
    time REAL NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    state TEXT,
    previous_state TEXT,
    checkpoint TEXT NOT NULL DEFAULT '',
    step INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_by_run ON events(run_id, sequence);
CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    create_time REAL NOT NULL,
    emergency INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, checkpoint_id)
);
"""


def _is_write_failure(exc: sqlite3.OperationalError) -> bool:
    """A failure of the disk under the database (full, I/O error, read-only), not of a query."""
    text = str(exc).lower()
    return any(
        what in text for what in ("full", "disk i/o", "readonly", "read-only", "unable to open")
    )


def _spec_to_json(spec: RunSpec) -> str:
    return json.dumps(dataclasses.asdict(spec), sort_keys=True)


def _spec_from_json(text: str) -> RunSpec:
    data: dict[str, Any] = json.loads(text)
    data["policy"] = CheckpointPolicy(**data["policy"])
    return RunSpec(**data)


class Registry:
    """Thread-safe access to the registry database (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._write_error: str | None = None
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.executescript(_SCHEMA)
        # Reads use their own connection: with WAL they never wait for a writer's fsync.
        self._rconn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._rconn.execute("PRAGMA busy_timeout=5000")
        self._rlock = threading.Lock()
        # Every run's row, parsed, kept equal to the database: refreshed from it after each
        # committed write to the run, so reads (GetRun, ListRuns) touch no SQLite and parse
        # no JSON. `_order` is sorted by (create_time, id).
        self._clock = threading.Lock()
        self._runs: dict[str, RunRecord] = {}
        self._order: list[tuple[float, str]] = []
        for row in self._read(f"SELECT {self._RUN_COLUMNS} FROM runs"):
            self._cache(self._row_to_run(row))

    def _cache(self, record: RunRecord) -> None:
        with self._clock:
            if record.id not in self._runs:
                bisect.insort(self._order, (record.create_time, record.id))
            self._runs[record.id] = record

    def close(self) -> None:
        """Close the database."""
        with self._lock, self._rlock:
            self._rconn.close()
            self._conn.close()

    def _read(self, sql: str, args: Any = ()) -> list[Any]:
        with self._rlock:
            return self._rconn.execute(sql, args).fetchall()

    @property
    def write_error(self) -> str | None:
        """Why the last write failed (the disk is full...), or None once writes work again."""
        return self._write_error

    def probe_write(self) -> bool:
        """Try a tiny write (to learn whether writes work again); True when it committed."""
        try:
            with self._tx() as db:
                db.execute("INSERT OR REPLACE INTO write_probe VALUES (1, ?)", (time.time(),))
        except RegistryUnwritableError:
            return False
        return True

    @contextmanager
    def _tx(self, run_id: str | None = None) -> Iterator[sqlite3.Connection]:
        """One transaction; after it commits, re-read run `run_id`'s row into the cache.

        Raises:
            RegistryUnwritableError: SQLite could not write (a full disk, an I/O error);
                the transaction was rolled back and ``write_error`` says why.
        """
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    if self._conn.in_transaction:  # SQLite may have rolled back already
                        with contextlib.suppress(sqlite3.Error):
                            self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                if not _is_write_failure(exc):
                    raise
                self._write_error = str(exc)
                raise RegistryUnwritableError(
                    f"the registry cannot write ({exc}); nothing was changed"
                ) from None
            self._write_error = None
            if run_id is not None:
                row = self._conn.execute(
                    f"SELECT {self._RUN_COLUMNS} FROM runs WHERE id=?", (run_id,)
                ).fetchone()
                if row is not None:
                    self._cache(self._row_to_run(row))

    # -- runs ---------------------------------------------------------------

    def insert_run(self, record: RunRecord, event_message: str) -> Event:
        """Insert a new run and its creation event in one transaction.

        Raises:
            AlreadyExistsError: the id is taken.
        """
        with self._tx(record.id) as db:
            if db.execute("SELECT 1 FROM runs WHERE id=?", (record.id,)).fetchone():
                raise AlreadyExistsError(f"runs/{record.id} exists already")
            db.execute(
                "INSERT INTO runs (id, kind, spec, resolved_config, state, create_time, update_time)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    record.id,
                    record.spec.kind,
                    _spec_to_json(record.spec),
                    json.dumps(record.resolved_config, sort_keys=True),
                    record.state.value,
                    record.create_time,
                    record.update_time,
                ),
            )
            return self._add_event(
                db, record.id, EventType.STATE_CHANGED, event_message, state=record.state
            )

    def _row_to_run(self, row: sqlite3.Row | tuple[Any, ...]) -> RunRecord:
        (
            run_id,
            _kind,
            spec,
            resolved,
            state,
            step,
            sps,
            message,
            restarts,
            latest,
            metrics,
            create_time,
            start_time,
            update_time,
            end_time,
        ) = row
        return RunRecord(
            id=run_id,
            spec=_spec_from_json(spec),
            state=State(state),
            step=step,
            steps_per_second=sps,
            state_message=message,
            restarts=restarts,
            latest_checkpoint=latest,
            metrics=json.loads(metrics),
            create_time=create_time,
            start_time=start_time,
            update_time=update_time,
            end_time=end_time,
            resolved_config=json.loads(resolved),
        )

    _RUN_COLUMNS = (
        "id, kind, spec, resolved_config, state, step, steps_per_second, state_message, "
        "restarts, latest_checkpoint, metrics, create_time, start_time, update_time, end_time"
    )

    def get_run(self, run_id: str) -> RunRecord:
        """Return one run (a copy: its fields may be reassigned; don't mutate its dicts).

        Raises:
            NotFoundError: no such run.
        """
        with self._clock:
            record = self._runs.get(run_id)
        if record is None:
            raise NotFoundError(f"runs/{run_id} does not exist")
        return dataclasses.replace(record)

    def list_runs(
        self, *, state: State | None, limit: int, before: tuple[float, str] | None
    ) -> list[RunRecord]:
        """Return up to `limit` runs, newest first, created before the (time, id) cursor."""
        out: list[RunRecord] = []
        with self._clock:
            i = len(self._order) if before is None else bisect.bisect_left(self._order, before)
            while i > 0 and len(out) < limit:
                i -= 1
                record = self._runs[self._order[i][1]]
                if state is None or record.state == state:
                    out.append(record)
        return [dataclasses.replace(r) for r in out]

    def runs_in_states(self, states: tuple[State, ...]) -> list[RunRecord]:
        """Return every run in one of `states`, oldest first."""
        marks = ",".join("?" for _ in states)
        rows = self._read(
            f"SELECT {self._RUN_COLUMNS} FROM runs WHERE state IN ({marks}) ORDER BY create_time",
            [s.value for s in states],
        )
        return [self._row_to_run(r) for r in rows]

    def set_state(
        self,
        run_id: str,
        state: State,
        message: str,
        *,
        step: int | None = None,
        restarts: int | None = None,
        event_type: EventType = EventType.STATE_CHANGED,
    ) -> Event:
        """Change a run's state and record the event, in one transaction."""
        now = time.time()
        with self._tx(run_id) as db:
            row = db.execute("SELECT state, step FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"runs/{run_id} does not exist")
            previous = State(row[0])
            step = row[1] if step is None else step
            sets = ["state=?", "state_message=?", "update_time=?", "step=?"]
            args: list[Any] = [state.value, message, now, step]
            if state == State.RUNNING:
                sets.append("start_time=CASE WHEN start_time=0 THEN ? ELSE start_time END")
                args.append(now)
            if state.terminal:
                sets.append("end_time=?")
                args.append(now)
            if state != State.RUNNING:
                sets.append("steps_per_second=0")
            if restarts is not None:
                sets.append("restarts=?")
                args.append(restarts)
            db.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id=?", (*args, run_id))
            return self._add_event(
                db, run_id, event_type, message, state=state, previous=previous, step=step
            )

    def update_progress(
        self, run_id: str, step: int, steps_per_second: float, metrics: dict[str, float]
    ) -> None:
        """Persist a run's progress (called at a bounded rate)."""
        with self._tx(run_id) as db:
            db.execute(
                "UPDATE runs SET step=?, steps_per_second=?, metrics=?, update_time=? WHERE id=?",
                (step, steps_per_second, json.dumps(metrics), time.time(), run_id),
            )

    # -- checkpoints --------------------------------------------------------

    def add_checkpoint(self, ckpt: CheckpointRecord) -> Event:
        """Index a saved checkpoint, make it the run's latest, and record the event."""
        with self._tx(ckpt.run_id) as db:
            db.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?,?,?)",
                (
                    ckpt.run_id,
                    ckpt.checkpoint_id,
                    ckpt.step,
                    ckpt.path,
                    ckpt.size_bytes,
                    ckpt.create_time,
                    int(ckpt.emergency),
                ),
            )
            db.execute(
                "UPDATE runs SET latest_checkpoint=?, step=MAX(step, ?), update_time=? WHERE id=?",
                (ckpt.name, ckpt.step, time.time(), ckpt.run_id),
            )
            return self._add_event(
                db,
                ckpt.run_id,
                EventType.CHECKPOINT_SAVED,
                f"checkpoint saved: step {ckpt.step} -> {ckpt.path}",
                checkpoint=ckpt.name,
                step=ckpt.step,
            )

    def remove_checkpoints(self, run_id: str, checkpoint_ids: list[str]) -> None:
        """Forget checkpoints that retention deleted."""
        with self._tx() as db:
            db.executemany(
                "DELETE FROM checkpoints WHERE run_id=? AND checkpoint_id=?",
                [(run_id, c) for c in checkpoint_ids],
            )

    def reconcile_checkpoints(
        self,
        run_id: str,
        added: list[CheckpointRecord],
        removed: list[str],
        message: str,
        type_: EventType = EventType.LOG,
    ) -> Event:
        """Make the index of a run's checkpoints what its directory holds, in one transaction.

        Adds ``added``, drops the ids ``removed``, points the run's latest checkpoint at
        the newest one left (empty when none) and records ``message`` as an event.
        """
        with self._tx(run_id) as db:
            db.executemany(
                "DELETE FROM checkpoints WHERE run_id=? AND checkpoint_id=?",
                [(run_id, c) for c in removed],
            )
            db.executemany(
                "INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?,?,?)",
                [
                    (
                        c.run_id,
                        c.checkpoint_id,
                        c.step,
                        c.path,
                        c.size_bytes,
                        c.create_time,
                        int(c.emergency),
                    )
                    for c in added
                ],
            )
            newest = db.execute(
                "SELECT checkpoint_id, step FROM checkpoints WHERE run_id=?"
                " ORDER BY step DESC, emergency DESC, create_time DESC LIMIT 1",
                (run_id,),
            ).fetchone()
            latest = f"runs/{run_id}/checkpoints/{newest[0]}" if newest else ""
            db.execute(
                "UPDATE runs SET latest_checkpoint=?, step=MAX(step, ?), update_time=? WHERE id=?",
                (latest, newest[1] if newest else 0, time.time(), run_id),
            )
            return self._add_event(db, run_id, type_, message)

    def list_checkpoints(self, run_id: str) -> list[CheckpointRecord]:
        """Return a run's indexed checkpoints, oldest first."""
        rows = self._read(
            "SELECT run_id, checkpoint_id, step, path, size_bytes, create_time, emergency"
            " FROM checkpoints WHERE run_id=? ORDER BY step, create_time",
            (run_id,),
        )
        return [CheckpointRecord(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows]

    def get_checkpoint(self, run_id: str, checkpoint_id: str) -> CheckpointRecord:
        """Return one indexed checkpoint.

        Raises:
            NotFoundError: not indexed.
        """
        for c in self.list_checkpoints(run_id):
            if c.checkpoint_id == checkpoint_id:
                return c
        raise NotFoundError(f"runs/{run_id}/checkpoints/{checkpoint_id} does not exist")

    # -- events -------------------------------------------------------------

    def _add_event(
        self,
        db: sqlite3.Connection,
        run_id: str,
        type_: EventType,
        message: str,
        *,
        state: State | None = None,
        previous: State | None = None,
        checkpoint: str = "",
        step: int | None = None,
    ) -> Event:
        now = time.time()
        if step is None:
            row = db.execute("SELECT step FROM runs WHERE id=?", (run_id,)).fetchone()
            step = row[0] if row else 0
        cur = db.execute(
            "INSERT INTO events (run_id, type, time, message, state, previous_state, checkpoint, step)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (
                run_id,
                type_.value,
                now,
                message,
                state.value if state else None,
                previous.value if previous else None,
                checkpoint,
                step,
            ),
        )
        seq = cur.lastrowid
        assert seq is not None
        return Event(seq, run_id, type_, now, message, state, previous, checkpoint, step)

    def add_event(
        self, run_id: str, type_: EventType, message: str, step: int | None = None
    ) -> Event:
        """Record a log line, warning or error of a run."""
        with self._tx() as db:
            return self._add_event(db, run_id, type_, message, step=step)

    def events(self, run_id: str | None, from_sequence: int, limit: int = 1000) -> list[Event]:
        """Return up to `limit` events with sequence >= from_sequence (all runs when None)."""
        sql = (
            "SELECT sequence, run_id, type, time, message, state, previous_state, checkpoint, step"
            " FROM events WHERE sequence >= ?"
        )
        args: list[Any] = [from_sequence]
        if run_id is not None:
            sql += " AND run_id = ?"
            args.append(run_id)
        sql += " ORDER BY sequence LIMIT ?"
        rows = self._read(sql, (*args, limit))
        return [
            Event(
                r[0],
                r[1],
                EventType(r[2]),
                r[3],
                r[4],
                State(r[5]) if r[5] else None,
                State(r[6]) if r[6] else None,
                r[7],
                r[8],
            )
            for r in rows
        ]
