"""Loggers: JSONL records, W&B offline with a stable run id (never the network)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from trainsvc_trainer import JsonlLogger, MultiLogger, WandbLogger, WandbUnavailableError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_jsonl_appends_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "m" / "metrics.jsonl"
    for start in (0, 2):  # a resumed run appends to the same file
        logger = JsonlLogger(path)
        logger.start(total_steps=4, initial_step=start)
        logger.log(start + 1, {"reward": 0.5, "bad": math.nan})
        logger.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 3]
    assert records[0]["metrics"] == {"reward": 0.5, "bad": "nan"}


def test_wandb_offline_keeps_one_run_id_across_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for step in (1, 2):  # two processes' worth of start/log/close with the same id
        logger = MultiLogger(
            [WandbLogger("trainsvc-test", "run0abc", mode="offline", directory=tmp_path)]
        )
        logger.start(total_steps=2, initial_step=step - 1)
        logger.log(step, {"reward": float(step)})
        logger.close()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*-run0abc"))
    assert runs, list((tmp_path / "wandb").iterdir())
    assert all(r.name.endswith("-run0abc") for r in runs)


def test_wandb_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    with pytest.raises(WandbUnavailableError, match=r"trainsvc-trainer\[wandb\].*--no-wandb"):
        WandbLogger("p", "id")
