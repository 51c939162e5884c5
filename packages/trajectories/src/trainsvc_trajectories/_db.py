"""One connection to SQLite or PostgreSQL behind the same small interface.

SQL in this package is written once with ``?`` placeholders; PostgreSQL gets ``%s``.
Transactions are explicit (``with db.transaction():``); outside one, each statement
commits on its own.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from ._errors import StoreError
from ._schema import MIGRATIONS, SCHEMA_VERSION

Dialect = Literal["sqlite", "postgresql"]
Params = Sequence[Any]

DEFAULT_URL = "sqlite:///.trainsvc/trajectories.db"


def parse_url(url: str | Path) -> tuple[Dialect, str]:
    """``(dialect, target)``: a SQLite file path or a PostgreSQL conninfo URL.

    Accepted: ``sqlite:///relative.db``, ``sqlite:////abs/path.db``, a plain path,
    ``sqlite://:memory:`` is refused (the writer thread needs its own connection),
    ``postgresql://...`` / ``postgres://...``.
    """
    text = str(url)
    if text.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return "postgresql", text.replace("postgresql+psycopg://", "postgresql://", 1)
    if text.startswith("sqlite:"):
        parsed = urlparse(text)
        path = unquote(parsed.path)
        if parsed.netloc not in ("",):
            raise StoreError(f"db url {text!r}: write sqlite:///relative.db or sqlite:////abs.db")
        path = path[1:] if path.startswith("/") else path
        if not path or path == ":memory:":
            raise StoreError(f"db url {text!r}: a SQLite store needs a file path")
        return "sqlite", path
    if "://" in text:
        raise StoreError(
            f"db url {text!r}: unknown scheme; allowed: sqlite:///path.db, a file path, "
            "postgresql://user@host:port/db"
        )
    return "sqlite", text


class Db:
    """A connection with placeholder translation and explicit transactions."""

    def __init__(self, url: str | Path) -> None:
        self.dialect, self._target = parse_url(url)
        self._lock = threading.RLock()
        self._conn: Any
        if self.dialect == "sqlite":
            path = Path(self._target)
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=60000")
            self._conn = conn
        else:
            try:
                import psycopg
            except ImportError as e:  # pragma: no cover - depends on the extra
                raise StoreError(
                    "a postgresql:// store needs psycopg 3: "
                    "pip install 'trainsvc-trajectories[postgres]'"
                ) from e
            try:
                self._conn = psycopg.connect(self._target, autocommit=True)
            except psycopg.Error as e:
                raise StoreError(f"cannot connect to PostgreSQL: {e}") from e
        self._depth = 0

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        with self._lock:
            cur = self._conn.execute(self._sql(sql), tuple(params))
            return int(cur.rowcount)

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        if not rows:
            return
        with self._lock:
            if self.dialect == "sqlite":
                self._conn.executemany(sql, rows)
            else:
                with self._conn.cursor() as cur:
                    cur.executemany(self._sql(sql), rows)

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column name."""
        with self._lock:
            cur = self._conn.execute(self._sql(sql), tuple(params))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All statements inside commit together or not at all (SQLite takes the write lock first)."""
        with self._lock:
            if self._depth:
                raise StoreError("nested transactions are not supported")
            self._depth = 1
            try:
                if self.dialect == "sqlite":
                    self._conn.execute("BEGIN IMMEDIATE")
                    try:
                        yield
                    except BaseException:
                        self._conn.execute("ROLLBACK")
                        raise
                    self._conn.execute("COMMIT")
                else:
                    with self._conn.transaction():
                        yield
            finally:
                self._depth = 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def reconnect_if_broken(self) -> bool:
        """Open a new PostgreSQL connection when the server dropped this one; True if it did."""
        if self.dialect != "postgresql" or not self._conn.closed:
            return False
        import psycopg

        with self._lock:
            try:
                self._conn = psycopg.connect(self._target, autocommit=True)
            except psycopg.Error:
                return False
        return True

    # -- schema ---------------------------------------------------------------

    def schema_version(self) -> int:
        """The highest applied migration (0 on an empty database)."""
        if self.dialect == "sqlite":
            exists = self.query(
                "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_migrations'"
            )
        else:
            exists = self.query(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_name = 'schema_migrations'"
            )
        if not exists:
            return 0
        row = self.query("SELECT MAX(version) AS v FROM schema_migrations")
        return int(row[0]["v"] or 0)

    def migrate(self) -> list[int]:
        """Apply the missing migrations, each in its own transaction; returns their versions.

        Safe when several processes open the same database at once: SQLite's write lock
        or a PostgreSQL advisory lock serialises them, and each re-checks the version.

        Raises:
            StoreError: the database has a newer schema than this code knows.
        """
        applied: list[int] = []
        with self.transaction():
            if self.dialect == "postgresql":
                self.execute("SELECT pg_advisory_xact_lock(7318041801)")
            self.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version BIGINT PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at DOUBLE PRECISION NOT NULL)"
            )
            current = self.schema_version()
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"schema version {current} is newer than this trainsvc-trajectories "
                    f"(knows up to {SCHEMA_VERSION}); upgrade the package"
                )
            for version, name, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    self.execute(statement)
                self.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, time.time()),
                )
                applied.append(version)
        return applied
