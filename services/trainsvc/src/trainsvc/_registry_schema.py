"""The run registry's schema as versioned migrations, one text for SQLite and PostgreSQL.

Portable SQL only: TEXT, BIGINT, DOUBLE PRECISION, composite primary keys, JSON kept
as TEXT; the one type that differs (an auto-numbered key) is the ``{autoincrement_key}``
placeholder, filled in by `_registry_db.migrate` per dialect. Migration 1 is the
schema of registries created before migrations were versioned (``IF NOT EXISTS``
throughout, so such a registry is adopted as it is).
"""

from __future__ import annotations

from typing import Final

MIGRATIONS: Final[tuple[tuple[int, str, tuple[str, ...]], ...]] = (
    (
        1,
        "runs, events, checkpoints",
        (
            """CREATE TABLE IF NOT EXISTS runs (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                spec TEXT NOT NULL,
                resolved_config TEXT NOT NULL,
                state TEXT NOT NULL,
                step BIGINT NOT NULL DEFAULT 0,
                steps_per_second DOUBLE PRECISION NOT NULL DEFAULT 0,
                state_message TEXT NOT NULL DEFAULT '',
                restarts BIGINT NOT NULL DEFAULT 0,
                latest_checkpoint TEXT NOT NULL DEFAULT '',
                metrics TEXT NOT NULL DEFAULT '{{}}',
                create_time DOUBLE PRECISION NOT NULL,
                start_time DOUBLE PRECISION NOT NULL DEFAULT 0,
                update_time DOUBLE PRECISION NOT NULL,
                end_time DOUBLE PRECISION NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX IF NOT EXISTS runs_by_state ON runs(state, create_time)",
            """CREATE TABLE IF NOT EXISTS events (
                sequence {autoincrement_key},
                run_id TEXT NOT NULL,
                type TEXT NOT NULL,
                time DOUBLE PRECISION NOT NULL,
                message TEXT NOT NULL DEFAULT '',
                state TEXT,
                previous_state TEXT,
                checkpoint TEXT NOT NULL DEFAULT '',
                step BIGINT NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX IF NOT EXISTS events_by_run ON events(run_id, sequence)",
            """CREATE TABLE IF NOT EXISTS write_probe (
                id BIGINT PRIMARY KEY,
                time DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS checkpoints (
                run_id TEXT NOT NULL,
                checkpoint_id TEXT NOT NULL,
                step BIGINT NOT NULL,
                path TEXT NOT NULL,
                size_bytes BIGINT NOT NULL,
                create_time DOUBLE PRECISION NOT NULL,
                emergency BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (run_id, checkpoint_id)
            )""",
        ),
    ),
    (
        2,
        "the control-plane lease",
        (
            """CREATE TABLE IF NOT EXISTS registry_lease (
                name TEXT PRIMARY KEY,
                holder TEXT NOT NULL,
                generation BIGINT NOT NULL,
                acquired_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""",
        ),
    ),
)
"""``(version, name, statements)``, applied in order; never edit a released one."""

SCHEMA_VERSION: Final[int] = MIGRATIONS[-1][0]
