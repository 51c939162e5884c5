"""The store: migrations, archiving with verification before pruning, windows, exports."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import trainsvc_trajectories as tt


def fill(url: str, window: str = "w", n: int = 4, *, scenarios: int = 2) -> None:
    with tt.TrajectoryRecorder(url) as rec:
        for i in range(n):
            t = rec.start_trajectory("a", window_id=window, scenario_id=f"s{i % scenarios}")
            rec.start_step(t, {"i": i})
            rec.log_llm_call(t, "m", "sys", f"u{i}", "r")
            rec.complete_step(t, i, float(i))
            rec.end_trajectory(t)


def test_migrations_are_recorded_and_a_newer_schema_is_refused(db_url: str) -> None:
    with tt.Store(db_url) as store:
        rows = store.db.query("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [1, 2] == list(range(1, tt.SCHEMA_VERSION + 1))
        assert store.db.migrate() == []  # idempotent
        store.db.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    with pytest.raises(tt.StoreError, match="schema version 99 is newer"):
        tt.Store(db_url)


def test_archive_verifies_then_prunes(db_url: str, tmp_path: Path) -> None:
    fill(db_url, "old")
    fill(db_url, "new")
    with tt.Store(db_url) as store:
        res = store.archive_window("old", str(tmp_path / "arch"))
        assert res.pruned and res.trajectories == 4 and res.rows == 12
        assert [w.window_id for w in store.windows()] == ["new"]
        tables = tt.read_archive(res.url)
        assert len(tables["trajectories"]) == 4 and len(tables["llm_calls"]) == 4
        assert {r["window_id"] for r in tables["trajectories"]} == {"old"}
        with pytest.raises(tt.StoreError, match="no trajectories"):
            store.archive_window("old", str(tmp_path / "arch"))


def test_a_bad_archive_prunes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    fill(url, "w")
    real = gzip.decompress

    def corrupt(data: bytes) -> bytes:  # the copy read back lost a row
        doc = json.loads(real(data))
        doc["tables"]["steps"].pop()
        return json.dumps(doc).encode()

    monkeypatch.setattr(gzip, "decompress", corrupt)
    with tt.Store(url) as store:
        with pytest.raises(tt.ArchiveVerificationError, match="nothing was pruned"):
            store.archive_window("w", str(tmp_path / "arch"))
        assert store.windows()[0].total == 4 and len(store.trajectories("w")[0].steps) == 1


def test_archive_refuses_open_windows_and_memory_fs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    with tt.TrajectoryRecorder(url) as rec:
        rec.start_trajectory("a", window_id="w")
        rec.flush()
        with tt.Store(url) as store, pytest.raises(tt.StoreError, match="still open"):
            store.archive_window("w", str(tmp_path / "arch"))
    fill(url, "done")
    with tt.Store(url) as store:
        res = store.archive_window("done", "memory://trajectory-archive")
        assert res.url.startswith("memory://") and res.url.endswith(
            "/trajectory-archive/window=done.json.gz"
        )
        assert res.pruned
        assert len(tt.read_archive(res.url)["steps"]) == 4
        # the still-open window is too young / open: archive_older_than leaves it
        assert store.archive_older_than(0, str(tmp_path / "arch")) == []
        assert [w.window_id for w in store.windows()] == ["w"]


def test_window_groups_and_no_complete_groups(db_url: str) -> None:
    fill(db_url, "w", n=6, scenarios=3)
    fill(db_url, "thin", n=2, scenarios=2)
    with tt.Store(db_url) as store:
        gs = tt.window_groups(store, "w")
        assert [g.metadata["scenario_id"] for g in gs] == ["s0", "s1", "s2"]
        assert all(len(g.trajectories) == 2 for g in gs)
        with pytest.raises(tt.NoCompleteGroupsError, match="window 'thin': no complete groups"):
            tt.window_groups(store, "thin")
        with pytest.raises(tt.NoCompleteGroupsError, match="no trajectories"):
            tt.window_groups(store, "missing")
        with pytest.raises(tt.UnknownTrajectoryError, match="not in the store"):
            store.trajectory("nope")


def test_bad_urls(tmp_path: Path) -> None:
    for url, msg in [
        ("mysql://x", "unknown scheme"),
        ("sqlite:///:memory:", "file path"),
        ("sqlite://host/x.db", "sqlite:///"),
    ]:
        with pytest.raises(tt.StoreError, match=msg):
            tt.Store(url)
    _: Any = tt.Store(tmp_path / "plain.db")
    _.close()
