"""CPU variants: the installed module runs the best code this CPU supports, and every variant agrees."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trainsvc_engine as te
import trainsvc_engine._engine as compiled

SMALL = {"pattern_set": "small", "n_phases": 2, "batch_games": 32, "threads": 2, "seed": 5}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.fixture
def restore_variant() -> Iterator[None]:
    before = te.cpu_variant()
    yield
    te.set_cpu_variant(before)


def test_the_installed_module_does_not_run_the_baseline_on_a_cpu_with_avx2() -> None:
    flags = _cpu_flags()
    if platform.machine() in ("x86_64", "AMD64") and {"avx2", "bmi2", "popcnt"} <= flags:
        assert te.cpu_variant() in ("x86-64-v3", "x86-64-v4")
        assert "x86-64-v3" in te.cpu_variants()
        if {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"} <= flags:
            assert te.cpu_variant() == "x86-64-v4"
    elif platform.machine() in ("aarch64", "arm64"):
        assert te.cpu_variant() == "aarch64-neon"
    assert te.cpu_variants()[0] == "baseline"
    assert te.cpu_variant() == te.cpu_variants()[-1]


def test_every_variant_counts_the_same_perft_and_trains_the_same_weights(
    tmp_path: Path, restore_variant: None
) -> None:
    weights: dict[str, list[float]] = {}
    for v in te.cpu_variants():
        te.set_cpu_variant(v)
        assert te.cpu_variant() == v
        assert te.perft(9) == 3_005_288, v
        m = te.TrainingManager(tmp_path / v, **SMALL)  # type: ignore[arg-type]
        m.start(256, checkpoint_interval=0, callback_interval=256)
        assert m.wait(timeout=120) is not None
        assert m.statistics().cpu_variant == v
        ev = m.evaluator()
        weights[v] = [w for p in ev.pattern_names for ph in range(2) for w in ev.weights(p, ph)]
        board = te.Board().play(19).play(18)
        weights[v].append(ev.evaluate(board.cells(), board.player))
    first = next(iter(weights.values()))
    assert any(w != 0.0 for w in first)
    for v, w in weights.items():
        assert w == first, f"{v} trained other weights than {te.cpu_variants()[0]}"


def test_unknown_or_unsupported_variants_are_refused(restore_variant: None) -> None:
    with pytest.raises(te.ConfigError, match="cpu_variant"):
        te.set_cpu_variant("x86-64-v9")
    other = "aarch64-neon" if platform.machine() in ("x86_64", "AMD64") else "x86-64-v3"
    with pytest.raises(te.ConfigError, match="supports"):
        te.set_cpu_variant(other)


def test_the_environment_variable_picks_a_variant_and_info_reports_it() -> None:
    env = {**os.environ, "TRAINSVC_ENGINE_CPU": "baseline"}
    out = subprocess.run(
        [sys.executable, "-m", "trainsvc_engine._cli", "info", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(out.stdout)
    assert info["cpu_variant"] == "baseline"
    assert info["version"] == te.__version__
    assert info["cpu_variants"] == te.cpu_variants()


@pytest.mark.skipif(
    shutil.which("objdump") is None or platform.machine() not in ("x86_64", "AMD64"),
    reason="needs objdump on x86-64",
)
def test_the_installed_extension_holds_popcnt_and_avx2_code() -> None:
    so = compiled.__file__
    assert so is not None
    asm = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", so], capture_output=True, text=True, check=True
    ).stdout
    words = asm.split()
    counts = {ins: words.count(ins) for ins in ("popcnt", "tzcnt", "vpsllvq", "vpsrlvq")}
    assert all(n > 0 for n in counts.values()), counts
