"""trainsvc-traj: --help everywhere, report/export/judge/archive, exit codes, --json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trainsvc_trajectories as tt
from trainsvc_trajectories._cli import main


def fill(url: str) -> None:
    with tt.TrajectoryRecorder(url) as rec:
        for i in range(6):
            with rec.trajectory("a", window_id="w", scenario_id=f"s{i % 2}") as t:
                rec.start_step(t, {"i": i})
                rec.log_provider_access(t, "feed", {"i": i})
                rec.log_llm_call(t, "m", "sys", f"u{i}", "r")
                rec.complete_step(t, i, float(i))
        with pytest.raises(ValueError), rec.trajectory("a", window_id="bad", scenario_id="s") as t:
            raise ValueError("tick failed")


@pytest.mark.parametrize("cmd", [[], ["windows"], ["report"], ["export"], ["judge"], ["archive"]])
def test_help(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0 and "usage: trainsvc-traj" in capsys.readouterr().out


def test_report_export_judge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path}/t.db"
    fill(db)
    assert main(["windows", "--db", db]) == 0
    assert "w " in capsys.readouterr().out
    assert main(["report", "--window", "w", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "reward coverage" in out
    assert main(["report", "--window", "w", "--db", db, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["passed"] and rep["provider_accesses"] == 6 and rep["complete_groups"] == 2
    assert main(["report", "--window", "bad", "--db", db]) == 1
    assert "FAIL: complete_fraction 0.000" in capsys.readouterr().out
    pq_out, jl_out = tmp_path / "w.parquet", tmp_path / "w.jsonl"
    assert main(["export", "--window", "w", "--db", db, "--out", str(pq_out)]) == 0
    assert "exported 2 groups (6 trajectories)" in capsys.readouterr().out
    assert main(["export", "--window", "w", "--db", db, "--out", str(jl_out), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported == {
        "out": str(jl_out),
        "format": "jsonl",
        "groups": 2,
        "trajectories": 6,
        "rows": 2,
    }
    assert tt.read_parquet(pq_out) == tt.read_jsonl(jl_out)
    judged = tmp_path / "judged.parquet"
    assert main(["judge", "--in", str(pq_out), "--out", str(judged)]) == 0
    assert "judged 2/2 groups with the rule judge" in capsys.readouterr().out
    assert tt.read_parquet(judged)[0].trajectories[0].metrics["ruler_score"] == 0.0
    assert (
        main(["export", "--window", "bad", "--db", db, "--out", str(tmp_path / "x.parquet")]) == 1
    )
    err = capsys.readouterr().err
    assert "window 'bad': no complete groups" in err and not (tmp_path / "x.parquet").exists()
    assert main(["judge", "--in", str(pq_out), "--out", str(judged), "--judge", "llm"]) == 1
    assert "--base-url and --model" in capsys.readouterr().err
    assert main(["windows", "--db", str(tmp_path / "typo.db")]) == 1
    assert "--db: no store at" in capsys.readouterr().err and not (tmp_path / "typo.db").exists()
    assert main(["archive", "--window", "w", "--db", db, "--to", str(tmp_path / "a")]) == 0
    assert "verified; pruned" in capsys.readouterr().out


def test_judge_with_an_llm_endpoint(
    tmp_path: Path, fake_openai: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    groups = [
        tt.ArtTrajectoryGroup(
            trajectories=[tt.ArtTrajectory(reward=float(k)) for k in range(3)],
            metadata={"scenario_id": f"s{g}"},
        )
        for g in range(2)
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    tt.write_jsonl(groups, src)
    (tmp_path / "rubric.txt").write_text("- shorter is better")
    fake_openai.script = ["malformed", "malformed", "malformed"]  # group 0 fails all 3 tries
    args = [
        "judge",
        "--in",
        str(src),
        "--out",
        str(out),
        "--judge",
        "llm",
        "--base-url",
        fake_openai.url,
        "--model",
        "j",
        "--rubric",
        f"@{tmp_path / 'rubric.txt'}",
        "--json",
    ]
    assert main(args) == 0
    rep = json.loads(capsys.readouterr().out)
    assert (rep["judged"], rep["skipped"], rep["calls"]) == (1, 1, 4)
    assert rep["skips"][0]["group_index"] == 0 and "malformed scores" in rep["skips"][0]["reason"]
    assert "- shorter is better" in fake_openai.requests[0]["messages"][0]["content"]
    [judged] = tt.read_jsonl(out)
    assert [t.metrics["ruler_score"] for t in judged.trajectories] == [0.0, 0.5, 1.0]
