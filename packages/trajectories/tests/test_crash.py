"""A recorder killed with SIGKILL mid-trajectory: the next start marks it abandoned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trainsvc_trajectories as tt

CHILD = Path(__file__).with_name("crash_child.py")


@pytest.mark.parametrize("commit", ["trajectory", "step"])
def test_sigkill_mid_trajectory_is_abandoned_on_restart(db_url: str, commit: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), db_url, commit], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    tid = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    with tt.Store(db_url) as store:
        before = store.trajectory(tid)
    assert before.status == "open"
    with tt.TrajectoryRecorder(db_url) as rec:
        assert rec.abandoned_on_start == [tid]
    with tt.Store(db_url) as store:
        after = store.trajectory(tid)
        assert "exited without ending it" in (after.error or "")
        assert after.status == "abandoned" and after.ended_at is not None
        # Never half-written: by default nothing but the header was committed; with
        # commit="step" the completed step is kept for inspection (exports skip it).
        assert [s.step_index for s in after.steps] == ([0] if commit == "step" else [])
        assert store.windows()[0].counts["abandoned"] == 1


WRITER = """
import sys
import trainsvc_trajectories as tt
with tt.TrajectoryRecorder(sys.argv[1]) as rec:
    for i in range(20):
        with rec.trajectory(sys.argv[2], window_id="w", scenario_id=f"s{i % 4}") as t:
            for k in range(3):
                rec.start_step(t, {"k": k})
                rec.log_llm_call(t, "m", "s", f"u{k}", "r")
                rec.complete_step(t, k, 1.0)
"""


def test_recorders_in_several_processes_share_a_store(db_url: str) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, db_url, f"proc-{n}"]) for n in range(3)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    with tt.Store(db_url) as store:
        ts = store.trajectories("w")
        assert len(ts) == 60 and {t.status for t in ts} == {"completed"}
        assert all(len(t.steps) == 3 and len(t.llm_calls) == 3 for t in ts)
        assert store.abandon_orphans() == []  # all three closed cleanly
