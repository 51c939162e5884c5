"""TrainingManager: start/pause/resume, callbacks, checkpoints, results, configuration."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trainsvc_engine as te

SMALL = {"pattern_set": "small", "n_phases": 2, "batch_games": 32, "threads": 2}


def _weights(ev: te.Evaluator) -> list[float]:
    return [w for p in ev.pattern_names for ph in range(ev.n_phases) for w in ev.weights(p, ph)]


def test_a_run_reaches_its_target_with_callbacks_checkpoints_and_a_result(tmp_path: Path) -> None:
    m = te.TrainingManager(tmp_path / "run", **SMALL)
    assert m.state == "idle"
    seen: list[tuple[int, float, float, float]] = []
    m.set_progress_callback(lambda g, d, w, e: seen.append((g, d, w, e)))
    m.start(640, checkpoint_interval=320, callback_interval=160)
    result = m.wait(timeout=120)
    assert result is not None
    assert m.state == "idle"
    assert result.games == 640 and result.reason == "target" and result.errors == 0
    assert result.black_rate + result.white_rate + result.draw_rate == pytest.approx(1.0)
    assert [p[0] for p in seen] == [160, 320, 480, 640]
    assert all(-64 <= d <= 64 and 0 <= w <= 1 for _, d, w, _ in seen)
    steps = [c.step for c in te.CheckpointManager(tmp_path / "run").list()]
    assert steps == [320, 640]
    assert (tmp_path / "run" / "latest").read_text() == "step_640.safetensors\n"
    stats = m.statistics()
    assert stats.games == 640 and 0 < stats.pattern_coverage < 1
    assert dict(stats.memory)["total"] <= dict(stats.memory)["budget"]
    assert '"games":640' in stats.to_json().replace(" ", "")


def test_pause_saves_and_resume_continues_to_the_same_weights_as_a_straight_run(
    tmp_path: Path,
) -> None:
    straight = te.TrainingManager(tmp_path / "a", **SMALL)
    straight.start(1280, checkpoint_interval=0)
    assert straight.wait(timeout=120) is not None

    m = te.TrainingManager(tmp_path / "b", **SMALL)
    m.start(1280, checkpoint_interval=0, callback_interval=32)
    while m.games < 200:
        time.sleep(0.01)
    games = m.pause()
    assert m.state == "paused"
    assert games % 32 == 0 and games < 1280
    assert [c.step for c in te.CheckpointManager(tmp_path / "b").list()] == [games]
    with pytest.raises(te.InvalidStateError, match="allowed only when idle"):
        m.start(10)
    m.resume()
    assert m.wait(timeout=120) is not None
    assert _weights(m.evaluator()) == _weights(straight.evaluator())


def test_configure_validates_and_applies_at_run_time(tmp_path: Path) -> None:
    m = te.TrainingManager(tmp_path, **SMALL)
    with pytest.raises(te.ConfigError, match=r"lambda: got 2; allowed: 0.0 to 1.0"):
        m.configure(**{"lambda": 2.0})
    with pytest.raises(te.ConfigError, match="lamda"):
        m.configure(lamda=0.5)
    m.configure(learning_rate=0.01, epsilon_start=0.2)
    assert m.config()["epsilon_start"] == 0.2
    m.start(320, checkpoint_interval=0)
    m.configure(epsilon_end=0.05)
    with pytest.raises(te.ConfigError, match="n_phases"):
        m.configure(n_phases=3)
    m.wait(timeout=120)
    assert m.config()["epsilon_end"] == 0.05
    with pytest.raises(te.ConfigError, match="target_games"):
        m.start(0)
    # The decay by games is the default; lr_decay_visits > 0 decays per weight.
    assert m.config()["lr_decay_visits"] == 0
    m.configure(lr_decay_visits=10_000)
    assert m.config()["lr_decay_visits"] == 10_000
    with pytest.raises(te.ConfigError, match="lr_decay_visits"):
        m.configure(lr_decay_visits=-1)


def test_injected_panics_are_counted_and_pause_training_with_a_reason(tmp_path: Path) -> None:
    m = te.TrainingManager(tmp_path, error_window=100, inject_panic_every=40, **SMALL)
    m.start(2000, checkpoint_interval=0)
    m.wait(timeout=120)
    assert m.state == "paused"
    assert m.last_error is not None and "errors in the last" in m.last_error
    result = m.result
    assert result is not None and result.errors >= 2 and result.reason.startswith("error_rate")
    assert any(c.emergency for c in te.CheckpointManager(tmp_path).list())


def test_ctrl_c_in_the_cli_saves_an_emergency_checkpoint_and_exits_cleanly(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cli = [sys.executable, "-m", "trainsvc_engine._cli", "train", "--dir", str(run_dir)]
    cli += ["--games", "100000000", "--checkpoint-interval", "0", "--callback-interval", "64"]
    # Started with SIGINT ignored, as a background job of a non-interactive shell
    # (or a test worker) passes it on: the CLI takes Ctrl+C all the same.
    proc = subprocess.Popen(
        ["sh", "-c", "trap '' INT; exec \"$@\"", "sh", *cli, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    progress = run_dir / "progress.jsonl"
    deadline = time.monotonic() + 120
    while not (progress.exists() and progress.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert '"interrupted": true' in out
    saved = te.CheckpointManager(run_dir).list()
    assert saved and saved[-1].emergency
    assert te.CheckpointManager(run_dir).load_latest().step == saved[-1].step
    assert (run_dir / "train.log").stat().st_size > 0


def test_pause_interrupts_a_deep_search_batch_and_the_checkpoint_restores(tmp_path: Path) -> None:
    m = te.TrainingManager(tmp_path, **SMALL)
    m.start(10_000_000, checkpoint_interval=0, callback_interval=32)
    deadline = time.monotonic() + 120
    while m.games < 64:
        assert time.monotonic() < deadline and m.state == "training"
        time.sleep(0.01)
    # From the next batch on, every move is an 8-ply alpha-beta search: a batch of
    # 32 such games takes minutes, so only a search that polls the stop flag lets
    # pause() return at once (the interrupted batch is dropped, not waited for).
    m.configure(search_depth=8)
    time.sleep(1.0)
    t0 = time.monotonic()
    games = m.pause()
    took = time.monotonic() - t0
    assert took < 5.0, f"pause took {took:.1f} s"
    assert m.state == "paused" and games >= 64 and games % 32 == 0
    saved = te.CheckpointManager(tmp_path).list()
    assert [c.step for c in saved] == [games]
    restored = te.Evaluator(saved[-1].path)
    assert _weights(restored) == _weights(m.evaluator())
    assert any(w != 0.0 for w in _weights(restored))
    m.resume()
    assert m.state == "training"
    assert m.pause() >= games
