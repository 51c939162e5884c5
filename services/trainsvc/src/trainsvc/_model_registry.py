"""The model registry: model versions, deployments with traffic splits, and their events.

A **model** is a name (``trader``); each registration adds a **version** (1, 2, ...)
with its artifact (a LoRA adapter or full weights, see `trainsvc._artifacts`), base
model, source run and checkpoint, metrics and the data windows it was trained on. A
model's **deployment** is its traffic split over versions (`trainsvc._traffic`); every
change of it (set traffic, promote, roll back) pushes the split it replaced on a
history, and a roll-back restores the split before the last change. Every change is
an **event** with who (the token's principal), when, why and the numbers.

SQLite in WAL mode with ``synchronous=FULL``, one transaction per change, committed
before the call returns: a SIGKILL at any instant loses no acknowledged version,
deployment or event. The file is its own (``models.db`` beside the run registry).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainsvc._domain import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    RegistryUnwritableError,
    echo,
)
from trainsvc._external_urls import parse_external_url
from trainsvc._traffic import validate_split

log = logging.getLogger("trainsvc.models")

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_versions (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    base_model TEXT NOT NULL,
    artifact_uri TEXT NOT NULL,
    artifact_kind TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    source_run TEXT NOT NULL,
    source_checkpoint TEXT NOT NULL,
    metrics TEXT NOT NULL,
    windows TEXT NOT NULL,
    evaluation TEXT NOT NULL DEFAULT 'none',
    evaluation_metrics TEXT NOT NULL DEFAULT '{}',
    create_time REAL NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS deployments (
    model TEXT PRIMARY KEY,
    traffic TEXT NOT NULL,
    external_base_url TEXT NOT NULL DEFAULT '',
    update_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deployment_history (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    traffic TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS model_events (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    type TEXT NOT NULL,
    time REAL NOT NULL,
    principal TEXT NOT NULL,
    reason TEXT NOT NULL,
    details TEXT NOT NULL,
    severity TEXT NOT NULL DEFAULT 'info'
);
CREATE INDEX IF NOT EXISTS model_events_by_model ON model_events(model, sequence);
CREATE TABLE IF NOT EXISTS automations (
    model TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    state TEXT NOT NULL,
    update_time REAL NOT NULL
);
"""

MODEL_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
ARTIFACT_KINDS = ("adapter", "full")
EVALUATIONS = ("none", "passed", "failed")
SEVERITIES = ("info", "warning", "error")
Also = Callable[[sqlite3.Connection], None]
"""Writes a caller commits in the same transaction as a change (the automation's state)."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model.

    Attributes:
        artifact_kind: ``adapter`` (a PEFT LoRA adapter on ``base_model``) or ``full``.
        evaluation: ``none`` until evaluated, then ``passed`` or ``failed`` (a failed
            version is not promoted unless forced).
        windows: the trajectory windows it was trained on.
    """

    model: str
    version: int
    base_model: str
    artifact_uri: str
    artifact_kind: str
    artifact_sha256: str
    source_run: str = ""
    source_checkpoint: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    windows: tuple[str, ...] = ()
    evaluation: str = "none"
    evaluation_metrics: dict[str, float] = field(default_factory=dict)
    create_time: float = 0.0


@dataclass(frozen=True)
class Deployment:
    """A model's traffic split (version -> share) and, optionally, the external
    OpenAI-compatible server that generates for it (trainsvc routes and records)."""

    model: str
    traffic: dict[int, float]
    external_base_url: str = ""
    update_time: float = 0.0


@dataclass(frozen=True)
class ModelEvent:
    """One recorded change: ``type`` is registered, evaluated, traffic, promoted,
    rolled_back or automation; ``details`` holds the numbers (splits before and after,
    metrics, an automation's action); ``severity`` is info, warning or error."""

    sequence: int
    model: str
    version: int
    type: str
    time: float
    principal: str
    reason: str
    details: dict[str, Any]
    severity: str = "info"


def check_model_name(name: str, field_name: str = "model") -> str:
    """``name`` if it is a valid model name (lowercase letter, then ``a-z 0-9 -``, <= 63)."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise InvalidArgumentError(
            field_name,
            f"must be a lowercase letter then up to 62 of a-z, 0-9 and '-', got {echo(name)}",
        )
    return name


def _split_json(split: Mapping[int, float]) -> str:
    return json.dumps({str(v): s for v, s in sorted(split.items())})


def _split_of(text: str) -> dict[int, float]:
    return {int(v): float(s) for v, s in json.loads(text).items()}


class ModelRegistry:
    """Versions, deployments and events in one SQLite file (thread-safe)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._watchers: list[Callable[[str], None]] = []
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        (found,) = self._db.execute("PRAGMA user_version").fetchone()
        if found > SCHEMA_VERSION:
            raise FailedPreconditionError(
                f"{self.path}: model registry schema {found} is newer than this service's "
                f"({SCHEMA_VERSION}); upgrade trainsvc"
            )
        with self.transaction() as db:
            if found == 1:  # version 1 had no severity and no automations
                db.execute(
                    "ALTER TABLE model_events ADD COLUMN severity TEXT NOT NULL DEFAULT 'info'"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def watch_deployments(self, callback: Callable[[str], None]) -> None:
        """Calls ``callback(model)`` after every committed change of a deployment (on the
        changing thread; its exceptions are logged, never raised)."""
        self._watchers.append(callback)

    def _changed(self, model: str) -> None:
        for callback in self._watchers:
            try:
                callback(model)
            except Exception:
                log.exception("a deployment watcher failed for %s", model)

    def close(self) -> None:
        """Closes the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``), committed when the block ends.

        Raises:
            RegistryUnwritableError: the database cannot be written (nothing changed).
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise RegistryUnwritableError(f"model registry: {exc}") from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._db.execute("ROLLBACK")
                raise RegistryUnwritableError(f"model registry: {exc}; nothing changed") from exc
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @staticmethod
    def add_event(
        db: sqlite3.Connection,
        model: str,
        version: int,
        type_: str,
        principal: str,
        reason: str,
        details: Mapping[str, Any],
        severity: str = "info",
    ) -> None:
        """Records an event inside ``db``'s open transaction (see `transaction`)."""
        if severity not in SEVERITIES:
            raise InvalidArgumentError("severity", f"must be one of {', '.join(SEVERITIES)}")
        db.execute(
            "INSERT INTO model_events "
            "(model, version, type, time, principal, reason, details, severity) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (model, version, type_, time.time(), principal, reason, json.dumps(details), severity),
        )

    # ------------------------------------------------------------------ versions

    def register(
        self,
        model: str,
        *,
        base_model: str,
        artifact_uri: str,
        artifact_kind: str,
        artifact_sha256: str,
        source_run: str = "",
        source_checkpoint: str = "",
        metrics: Mapping[str, float] | None = None,
        windows: Sequence[str] = (),
        principal: str = "",
        reason: str = "",
        also: Also | None = None,
    ) -> ModelVersion:
        """Adds the next version of ``model`` (1 for a new model); ``also`` runs in the
        same transaction (given the connection, after the version is inserted).

        Raises:
            InvalidArgumentError: a bad model name, artifact kind or empty artifact URI.
        """
        check_model_name(model)
        if artifact_kind not in ARTIFACT_KINDS:
            raise InvalidArgumentError(
                "artifact_kind",
                f"must be one of {', '.join(ARTIFACT_KINDS)}, got {echo(artifact_kind)}",
            )
        if not artifact_uri:
            raise InvalidArgumentError("artifact_uri", "is required")
        clean_metrics = {str(k): float(v) for k, v in (metrics or {}).items()}
        now = time.time()
        with self.transaction() as db:
            (last,) = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM model_versions WHERE model = ?", (model,)
            ).fetchone()
            version = int(last) + 1
            db.execute(
                "INSERT INTO model_versions (model, version, base_model, artifact_uri, "
                "artifact_kind, artifact_sha256, source_run, source_checkpoint, metrics, "
                "windows, create_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    model,
                    version,
                    base_model,
                    artifact_uri,
                    artifact_kind,
                    artifact_sha256,
                    source_run,
                    source_checkpoint,
                    json.dumps(clean_metrics),
                    json.dumps(list(windows)),
                    now,
                ),
            )
            details = {"artifact_uri": artifact_uri, "source_run": source_run, **clean_metrics}
            self.add_event(db, model, version, "registered", principal, reason, details)
            if also is not None:
                also(db)
        return self.version(model, version)

    def version(self, model: str, version: int) -> ModelVersion:
        """One version.

        Raises:
            NotFoundError: no such model or version.
        """
        row = self._db.execute(
            "SELECT * FROM model_versions WHERE model = ? AND version = ?", (model, version)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"model {echo(model)} has no version {version}")
        return self._version_of(row)

    def versions(self, model: str | None = None) -> list[ModelVersion]:
        """Every version (of ``model``), oldest first."""
        if model is None:
            rows = self._db.execute("SELECT * FROM model_versions ORDER BY model, version")
        else:
            rows = self._db.execute(
                "SELECT * FROM model_versions WHERE model = ? ORDER BY version", (model,)
            )
        return [self._version_of(r) for r in rows.fetchall()]

    def models(self) -> list[str]:
        """The registered model names, sorted."""
        rows = self._db.execute("SELECT DISTINCT model FROM model_versions ORDER BY model")
        return [r[0] for r in rows.fetchall()]

    @staticmethod
    def _version_of(row: Sequence[Any]) -> ModelVersion:
        (model, version, base, uri, kind, sha, run, ckpt, metrics, windows, ev, ev_m, t) = row
        return ModelVersion(
            model=model,
            version=int(version),
            base_model=base,
            artifact_uri=uri,
            artifact_kind=kind,
            artifact_sha256=sha,
            source_run=run,
            source_checkpoint=ckpt,
            metrics=json.loads(metrics),
            windows=tuple(json.loads(windows)),
            evaluation=ev,
            evaluation_metrics=json.loads(ev_m),
            create_time=float(t),
        )

    def record_evaluation(
        self,
        model: str,
        version: int,
        passed: bool,
        metrics: Mapping[str, float],
        *,
        principal: str = "",
        reason: str = "",
        also: Also | None = None,
    ) -> ModelVersion:
        """Marks a version ``passed`` or ``failed`` with the evaluation's numbers."""
        self.version(model, version)
        clean = {str(k): float(v) for k, v in metrics.items()}
        outcome = "passed" if passed else "failed"
        with self.transaction() as db:
            db.execute(
                "UPDATE model_versions SET evaluation = ?, evaluation_metrics = ? "
                "WHERE model = ? AND version = ?",
                (outcome, json.dumps(clean), model, version),
            )
            self.add_event(
                db, model, version, "evaluated", principal, reason, {"outcome": outcome, **clean}
            )
            if also is not None:
                also(db)
        return self.version(model, version)

    # ------------------------------------------------------------------ deployments

    def deployment(self, model: str) -> Deployment | None:
        """The model's deployment, or None when it has never been deployed."""
        row = self._db.execute(
            "SELECT model, traffic, external_base_url, update_time FROM deployments "
            "WHERE model = ?",
            (model,),
        ).fetchone()
        if row is None:
            return None
        return Deployment(row[0], _split_of(row[1]), row[2], float(row[3]))

    def deployments(self) -> list[Deployment]:
        """Every deployment, by model name."""
        names = [r[0] for r in self._db.execute("SELECT model FROM deployments ORDER BY model")]
        return [d for name in names if (d := self.deployment(name)) is not None]

    def set_traffic(
        self,
        model: str,
        traffic: Mapping[int, float],
        *,
        principal: str = "",
        reason: str = "",
        external_base_url: str | None = None,
        event_type: str = "traffic",
        event_version: int | None = None,
        also: Also | None = None,
    ) -> Deployment:
        """Replaces the model's split (the old one goes on the roll-back history).

        The event names ``event_version`` (default: the version with the largest share);
        ``also`` runs in the same transaction.

        Raises:
            InvalidArgumentError: shares that do not sum to 1 (``traffic``), or an
                unregistered version (``traffic[N]``).
            NotFoundError: an unknown model.
        """
        known = {v.version for v in self.versions(model)}
        if not known:
            raise NotFoundError(f"model {echo(model)} is not registered")
        split = validate_split(traffic)
        if external_base_url:
            parse_external_url(external_base_url)
        for version in split:
            if version not in known:
                raise InvalidArgumentError(
                    f"traffic[{version}]", f"model {model} has no version {version}"
                )
        with self.transaction() as db:
            self._replace(db, model, split, external_base_url)
            before = self._history_top(db, model)
            details = {"before": before, "after": {str(v): s for v, s in split.items()}}
            named = (
                event_version if event_version is not None else max(split, key=split.__getitem__)
            )
            self.add_event(db, model, named, event_type, principal, reason, details)
            if also is not None:
                also(db)
        self._changed(model)
        deployment = self.deployment(model)
        assert deployment is not None
        return deployment

    def _replace(
        self,
        db: sqlite3.Connection,
        model: str,
        split: Mapping[int, float],
        external_base_url: str | None,
    ) -> None:
        row = db.execute(
            "SELECT traffic, external_base_url FROM deployments WHERE model = ?", (model,)
        ).fetchone()
        url = external_base_url if external_base_url is not None else (row[1] if row else "")
        if row is not None:
            db.execute(
                "INSERT INTO deployment_history (model, traffic) VALUES (?, ?)", (model, row[0])
            )
        db.execute(
            "INSERT INTO deployments (model, traffic, external_base_url, update_time) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(model) DO UPDATE SET traffic = excluded.traffic, "
            "external_base_url = excluded.external_base_url, update_time = excluded.update_time",
            (model, _split_json(split), url, time.time()),
        )

    @staticmethod
    def _history_top(db: sqlite3.Connection, model: str) -> dict[str, float] | None:
        row = db.execute(
            "SELECT traffic FROM deployment_history WHERE model = ? ORDER BY sequence DESC LIMIT 1",
            (model,),
        ).fetchone()
        return None if row is None else {str(v): s for v, s in _split_of(row[0]).items()}

    def promote(
        self,
        model: str,
        version: int,
        fraction: float = 1.0,
        *,
        force: bool = False,
        principal: str = "",
        reason: str = "",
        also: Also | None = None,
    ) -> Deployment:
        """Gives ``version`` ``fraction`` of the traffic; the rest keeps its proportions
        (``also`` runs in the same transaction).

        Raises:
            InvalidArgumentError: ``fraction`` outside (0, 1].
            FailedPreconditionError: the version failed its evaluation (unless ``force``).
            NotFoundError: an unknown model or version.
        """
        target = self.version(model, version)
        if not (isinstance(fraction, int | float) and 0.0 < fraction <= 1.0):
            raise InvalidArgumentError("fraction", f"must be in (0, 1], got {echo(fraction)}")
        if target.evaluation == "failed" and not force:
            raise FailedPreconditionError(
                f"model {model} version {version} failed its evaluation "
                f"({target.evaluation_metrics}); promote with force to override"
            )
        current = self.deployment(model)
        rest = {v: s for v, s in (current.traffic if current else {}).items() if v != version}
        total = sum(rest.values())
        split = {v: s * (1.0 - fraction) / total for v, s in rest.items()} if total else {}
        if not split:
            fraction = 1.0  # nothing else to keep serving
        split[version] = fraction
        return self.set_traffic(
            model,
            split,
            principal=principal,
            reason=reason,
            event_type="promoted",
            event_version=version,
            also=also,
        )

    def rollback(
        self, model: str, *, principal: str = "", reason: str = "", also: Also | None = None
    ) -> Deployment:
        """Restores the split before the last change of the model's deployment (``also``
        runs in the same transaction).

        Raises:
            FailedPreconditionError: nothing to roll back to (never deployed, or no
                earlier split).
        """
        with self.transaction() as db:
            row = db.execute(
                "SELECT sequence, traffic FROM deployment_history WHERE model = ? "
                "ORDER BY sequence DESC LIMIT 1",
                (model,),
            ).fetchone()
            current = db.execute(
                "SELECT traffic FROM deployments WHERE model = ?", (model,)
            ).fetchone()
            if row is None or current is None:
                raise FailedPreconditionError(
                    f"model {echo(model)} has no previous deployment to roll back to"
                )
            db.execute("DELETE FROM deployment_history WHERE sequence = ?", (row[0],))
            db.execute(
                "UPDATE deployments SET traffic = ?, update_time = ? WHERE model = ?",
                (row[1], time.time(), model),
            )
            before, after = _split_of(current[0]), _split_of(row[1])
            details = {
                "before": {str(v): s for v, s in before.items()},
                "after": {str(v): s for v, s in after.items()},
            }
            # the version that loses the most traffic is the one rolled back
            demoted = max(before, key=lambda v: before[v] - after.get(v, 0.0))
            self.add_event(db, model, demoted, "rolled_back", principal, reason, details)
            if also is not None:
                also(db)
        self._changed(model)
        deployment = self.deployment(model)
        assert deployment is not None
        return deployment

    # ------------------------------------------------------------------ events

    def events(self, model: str | None = None, after: int = 0) -> list[ModelEvent]:
        """Events (of ``model``) with a sequence above ``after``, oldest first."""
        query = "SELECT * FROM model_events WHERE sequence > ?"
        args: list[Any] = [after]
        if model is not None:
            query += " AND model = ?"
            args.append(model)
        rows = self._db.execute(query + " ORDER BY sequence", args).fetchall()
        return [
            ModelEvent(
                int(r[0]), r[1], int(r[2]), r[3], float(r[4]), r[5], r[6], json.loads(r[7]), r[8]
            )
            for r in rows
        ]

    # ------------------------------------------------------------------ automations

    @staticmethod
    def latest_version(db: sqlite3.Connection, model: str) -> int:
        """The newest version of ``model`` as ``db``'s open transaction sees it (0: none)."""
        (last,) = db.execute(
            "SELECT COALESCE(MAX(version), 0) FROM model_versions WHERE model = ?", (model,)
        ).fetchone()
        return int(last)

    def automation(self, model: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """A model's automation policy and state (as stored JSON), or None."""
        row = self._db.execute(
            "SELECT policy, state FROM automations WHERE model = ?", (model,)
        ).fetchone()
        return None if row is None else (json.loads(row[0]), json.loads(row[1]))

    def automations(self) -> list[str]:
        """The models with an automation policy."""
        rows = self._db.execute("SELECT model FROM automations ORDER BY model").fetchall()
        return [r[0] for r in rows]

    @staticmethod
    def put_automation(
        db: sqlite3.Connection,
        model: str,
        *,
        policy: Mapping[str, Any] | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        """Writes a model's automation policy and/or state inside ``db``'s transaction."""
        row = db.execute(
            "SELECT policy, state FROM automations WHERE model = ?", (model,)
        ).fetchone()
        old_policy, old_state = (row[0], row[1]) if row else ("{}", "{}")
        db.execute(
            "INSERT OR REPLACE INTO automations (model, policy, state, update_time) "
            "VALUES (?, ?, ?, ?)",
            (
                model,
                old_policy if policy is None else json.dumps(policy, sort_keys=True),
                old_state if state is None else json.dumps(state, sort_keys=True),
                time.time(),
            ),
        )


__all__ = [
    "ARTIFACT_KINDS",
    "Deployment",
    "ModelEvent",
    "ModelRegistry",
    "ModelVersion",
    "check_model_name",
]
