"""The run registry: runs, events and the checkpoint index, in SQLite or PostgreSQL.

The embedded default is a SQLite file opened in WAL mode with ``synchronous=FULL``;
``postgresql://...`` puts it in a PostgreSQL database that several service
instances share (one of them, the lease holder, acts on it: `_lease`). The SQL
and the schema are the same for both (`_registry_db`, `_registry_schema`).
Every change is one transaction, committed before the RPC that caused it is
acknowledged, so a SIGKILL of the service at any instant loses no acknowledged
run, event or checkpoint.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import threading
import time
from collections.abc import Iterator, Sequence
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
from trainsvc._registry_db import (
    Connection,
    RegistryConfigError,
    RegistryLocation,
    migrate,
    parse_location,
)

LEASE_NAME = "control"
"""The row of ``registry_lease`` that names the instance acting on the registry."""


class NotLeaseHolderError(RegistryUnwritableError):
    """This instance does not hold the registry's lease: it may not write (a standby)."""


_UPSERT_CHECKPOINT = (
    "INSERT INTO checkpoints (run_id, checkpoint_id, step, path, size_bytes, create_time, emergency)"
    " VALUES (?,?,?,?,?,?,?) ON CONFLICT (run_id, checkpoint_id) DO UPDATE SET"
    " step=excluded.step, path=excluded.path, size_bytes=excluded.size_bytes,"
    " create_time=excluded.create_time, emergency=excluded.emergency"
)


def _spec_to_json(spec: RunSpec) -> str:
    return json.dumps(dataclasses.asdict(spec), sort_keys=True)


def _spec_from_json(text: str) -> RunSpec:
    data: dict[str, Any] = json.loads(text)
    data["policy"] = CheckpointPolicy(**data["policy"])
    return RunSpec(**data)


class Registry:
    """Thread-safe access to the registry database (a write connection and a read one,
    each with its own lock)."""

    def __init__(self, location: Path | str | RegistryLocation) -> None:
        """Open (creating or migrating) the registry: a SQLite file's path, or a URL
        (``sqlite:///...``, ``postgresql://...``: `_registry_db.parse_location`).

        Raises:
            RegistryConfigError: a malformed URL, a database that cannot be reached or
                logged into, or one with a newer schema (the message hides any password).
        """
        if not isinstance(location, RegistryLocation):
            location = parse_location(location)
        self.location = location
        self._conn = Connection(location)
        self._lock = threading.RLock()
        self._write_error: str | None = None
        self._fence: tuple[str, int] | None = None
        self._fenced = False
        with self._lock:
            try:
                migrate(self._conn)
            except RegistryConfigError:
                self._conn.close()
                raise
        # Reads use their own connection: with WAL they never wait for a writer's fsync.
        self._rconn = Connection(location)
        self._rlock = threading.Lock()
        # Every run's row, parsed, kept equal to the database: refreshed from it after each
        # committed write to the run, so reads (GetRun, ListRuns) touch no database and parse
        # no JSON. `_order` is sorted by (create_time, id).
        self._clock = threading.Lock()
        self._runs: dict[str, RunRecord] = {}
        self._order: list[tuple[float, str]] = []
        self.reload()

    def reload(self) -> None:
        """Re-read every run into the in-memory copy (another instance may have written
        them: a standby does this when it takes over)."""
        records = [self._row_to_run(r) for r in self._read(f"SELECT {self._RUN_COLUMNS} FROM runs")]
        with self._clock:
            self._runs = {r.id: r for r in records}
            self._order = sorted((r.create_time, r.id) for r in records)

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
            try:
                return list(self._rconn.execute(sql, args).fetchall())
            except Exception as exc:
                if not self._rconn.is_unavailable(exc):
                    raise
                self._rconn.reconnect_if_broken()  # one retry on a fresh connection
                try:
                    return list(self._rconn.execute(sql, args).fetchall())
                except Exception as again:
                    if not self._rconn.is_unavailable(again):
                        raise
                    raise RegistryUnwritableError(
                        f"the registry cannot be read ({' '.join(str(again).split())})"
                    ) from None

    @property
    def shared(self) -> bool:
        """The registry is a database that several instances may open (PostgreSQL)."""
        return self.location.shared

    def describe(self) -> str:
        """Where the registry is, for logs (no password)."""
        return self.location.redacted()

    def require_lease(self, holder: str | None, generation: int = 0) -> None:
        """Fence every later write: it commits only while ``holder`` holds the registry's
        lease at ``generation`` (checked inside the write's own transaction, so a write
        can never follow another instance's takeover). ``None``: refuse every write (a
        standby). Without a call, writes are not fenced (the embedded registry)."""
        # No lock: an instance that lost its lease fences at once, even while a write
        # hangs on a dead connection (each assignment is atomic; the fence goes first).
        self._fence = None if holder is None else (holder, generation)
        self._fenced = True

    def _check_fence(self, db: Connection) -> None:
        if not self._fenced:
            return
        row = db.execute(
            "SELECT holder, generation FROM registry_lease WHERE name=?" + db.dialect.lock_row,
            (LEASE_NAME,),
        ).fetchone()
        held = (row[0], int(row[1])) if row else None
        if self._fence is None or held != self._fence:
            who = f"held by {held[0]}" if held else "held by no instance"
            raise NotLeaseHolderError(
                f"this instance does not hold the registry's lease ({who}); it acts as a "
                "standby and changes nothing"
            )

    @property
    def write_error(self) -> str | None:
        """Why the last write failed (the disk is full...), or None once writes work again."""
        return self._write_error

    def probe_write(self) -> bool:
        """Try a tiny write (to learn whether writes work again); True when it committed."""
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO write_probe (id, time) VALUES (1, ?)"
                    " ON CONFLICT (id) DO UPDATE SET time=excluded.time",
                    (time.time(),),
                )
        except RegistryUnwritableError:
            return False
        return True

    @contextmanager
    def _tx(self, run_id: str | None = None) -> Iterator[Connection]:
        """One transaction; after it commits, re-read run `run_id`'s row into the cache.

        Raises:
            RegistryUnwritableError: the database could not write (a full disk, an I/O
                error, a lost connection); the transaction was rolled back and
                ``write_error`` says why.
            NotLeaseHolderError: writes are fenced (`require_lease`) and this instance
                does not hold the lease; nothing was changed.
        """
        with self._lock:
            try:
                self._conn.reconnect_if_broken()
                with self._conn.transaction() as db:
                    self._check_fence(db)
                    yield db
            except NotLeaseHolderError:
                raise
            except Exception as exc:
                self._conn.rollback()
                if not self._conn.is_unavailable(exc):
                    raise
                self._write_error = " ".join(str(exc).split())
                raise RegistryUnwritableError(
                    f"the registry cannot write ({self._write_error}); nothing was changed"
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

    def _row_to_run(self, row: Sequence[Any]) -> RunRecord:
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
                _UPSERT_CHECKPOINT,
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
                "UPDATE runs SET latest_checkpoint=?, step=CASE WHEN step > ? THEN step ELSE ? END,"
                " update_time=? WHERE id=?",
                (ckpt.name, ckpt.step, ckpt.step, time.time(), ckpt.run_id),
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
                _UPSERT_CHECKPOINT,
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
            floor = newest[1] if newest else 0
            db.execute(
                "UPDATE runs SET latest_checkpoint=?, step=CASE WHEN step > ? THEN step ELSE ? END,"
                " update_time=? WHERE id=?",
                (latest, floor, floor, time.time(), run_id),
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
        db: Connection,
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
        row = db.execute(
            "INSERT INTO events (run_id, type, time, message, state, previous_state, checkpoint, step)"
            " VALUES (?,?,?,?,?,?,?,?) RETURNING sequence",
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
        ).fetchone()
        seq = int(row[0])
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
