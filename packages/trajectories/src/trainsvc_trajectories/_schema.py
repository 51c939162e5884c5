"""The store's schema as versioned migrations, shared verbatim by SQLite and PostgreSQL.

Only portable SQL: TEXT, BIGINT, DOUBLE PRECISION, composite primary keys (no
autoincrement), JSON kept as TEXT. Each migration runs in one transaction together
with its row in ``schema_migrations``; a database newer than this code is refused.
"""

from __future__ import annotations

from typing import Final

MIGRATIONS: Final[tuple[tuple[int, str, tuple[str, ...]], ...]] = (
    (
        1,
        "trajectories, steps, llm calls, provider accesses, recorders",
        (
            """CREATE TABLE recorders (
                recorder_id TEXT PRIMARY KEY,
                host TEXT NOT NULL,
                pid BIGINT NOT NULL,
                proc_start TEXT NOT NULL,
                started_at DOUBLE PRECISION NOT NULL,
                heartbeat_at DOUBLE PRECISION NOT NULL,
                closed_at DOUBLE PRECISION
            )""",
            """CREATE TABLE trajectories (
                trajectory_id TEXT PRIMARY KEY,
                recorder_id TEXT NOT NULL,
                agent_id TEXT NOT NULL,
                window_id TEXT NOT NULL,
                scenario_id TEXT,
                status TEXT NOT NULL,
                metadata TEXT NOT NULL,
                final_metrics TEXT,
                reward DOUBLE PRECISION,
                error TEXT,
                started_at DOUBLE PRECISION NOT NULL,
                ended_at DOUBLE PRECISION,
                n_steps BIGINT NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE steps (
                trajectory_id TEXT NOT NULL,
                step_index BIGINT NOT NULL,
                environment_state TEXT NOT NULL,
                action TEXT,
                reward DOUBLE PRECISION,
                started_at DOUBLE PRECISION NOT NULL,
                completed_at DOUBLE PRECISION,
                PRIMARY KEY (trajectory_id, step_index)
            )""",
            """CREATE TABLE llm_calls (
                trajectory_id TEXT NOT NULL,
                seq BIGINT NOT NULL,
                step_index BIGINT,
                model TEXT NOT NULL,
                system_prompt TEXT,
                user_prompt TEXT,
                messages TEXT,
                response TEXT,
                temperature DOUBLE PRECISION,
                max_tokens BIGINT,
                purpose TEXT,
                action_type TEXT,
                latency DOUBLE PRECISION,
                prompt_tokens BIGINT,
                completion_tokens BIGINT,
                total_tokens BIGINT,
                created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (trajectory_id, seq)
            )""",
            """CREATE TABLE provider_accesses (
                trajectory_id TEXT NOT NULL,
                seq BIGINT NOT NULL,
                step_index BIGINT,
                provider TEXT NOT NULL,
                data TEXT NOT NULL,
                purpose TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (trajectory_id, seq)
            )""",
        ),
    ),
    (
        2,
        "indexes for windows, statuses and recorders",
        (
            "CREATE INDEX trajectories_window ON trajectories (window_id, scenario_id)",
            "CREATE INDEX trajectories_status ON trajectories (status, recorder_id)",
        ),
    ),
)

SCHEMA_VERSION: Final[int] = MIGRATIONS[-1][0]

# Child tables of a trajectory, in the order an archive lists them.
CHILD_TABLES: Final[tuple[str, ...]] = ("steps", "llm_calls", "provider_accesses")
