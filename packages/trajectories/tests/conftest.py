"""Shared fixtures: a real PostgreSQL server started here, stores, a fake OpenAI endpoint.

The server and the endpoint come from `trainsvc_trajectories.testing`, which the
service's end-to-end tests use too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from trainsvc_trajectories.testing import (
    LocalOpenAI,
    create_database,
    echo_answer,
    postgres_server_or_skip,
)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (run as 'postgres' when we are root)."""
    with postgres_server_or_skip() as url:
        yield url


@pytest.fixture
def pg_url(pg_server: str) -> str:
    """A fresh, empty database on the session's server."""
    return create_database(pg_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on a SQLite file and on a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/traj.db"
    return str(request.getfixturevalue("pg_url"))


def judge_or_echo(body: dict[str, Any], mode: str) -> str:
    """Answers a judge's request with scores 0..1 in trajectory order (or non-JSON
    content in ``malformed`` mode); anything else with the echo answer."""
    if mode == "malformed":
        return "I think trajectory 1 is best."
    messages = body.get("messages", [])
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    if not system.startswith("You are a judge"):
        return echo_answer(body, mode)
    user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    n = user.count("<trajectory id=")
    scores = [
        {
            "trajectory_id": str(i + 1),
            "explanation": f"judged {i + 1}",
            "score": (i / (n - 1)) if n > 1 else 0.5,
        }
        for i in range(n)
    ]
    return json.dumps({"scores": scores})


@pytest.fixture
def fake_openai() -> Iterator[LocalOpenAI]:
    with LocalOpenAI(judge_or_echo) as fake:
        yield fake
