"""The evolving learners (`learner="es"`, `"ctdl"`) through TrainingManager and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trainsvc_checkpoint as ckpt
import trainsvc_engine as te

# The 288-weight network of every straight 2-tuple, one phase, small generations.
TINY = {
    "pattern_set": "straight2",
    "n_phases": 1,
    "threads": 2,
    "seed": 5,
    "es_parents": 2,
    "es_offspring": 6,
    "es_fitness_pairs": 20,
    "ctdl_population": 4,
    "ctdl_td_games": 64,
    "ctdl_match_pairs": 4,
    "batch_games": 16,
}


def _heuristic_score(ev: te.Evaluator) -> float:
    return float(ev.league("heuristic", pairs=200, seed=3)["score"])


def test_es_is_selectable_and_beats_the_untrained_network(tmp_path: Path) -> None:
    m = te.TrainingManager(tmp_path / "es", learner="es", **TINY)
    assert m.config()["learner"] == "es"
    untrained = _heuristic_score(te.Evaluator(pattern_set="straight2", n_phases=1))
    # A generation is (2 + 6) candidates x 40 games = 320 games.
    m.start(320 * 15, checkpoint_interval=320 * 5, callback_interval=320)
    result = m.wait(timeout=300)
    assert result is not None and result.reason == "target"
    assert result.games == 320 * 15
    steps = [c.step for c in te.CheckpointManager(tmp_path / "es").list()]
    assert steps[-1] == 320 * 15
    trained = _heuristic_score(m.evaluator())
    assert trained > untrained + 0.15, (untrained, trained)
    # The checkpoint keeps the population (2 parents) and the learner.
    tree, info = ckpt.load_with_info(te.CheckpointManager(tmp_path / "es").list()[-1].path)
    assert info.metadata["config"]["learner"] == "es"
    assert tree["population"]["weights"].shape[0] == 2


def test_paused_and_resumed_ctdl_equals_a_straight_run(tmp_path: Path) -> None:
    # A generation: 4 x 64 TD games + 6 pairings x 8 games = 304 games.
    gen = 4 * 64 + 6 * 8
    straight = te.TrainingManager(tmp_path / "a", learner="ctdl", **TINY)
    straight.start(gen * 4, checkpoint_interval=0)
    assert straight.wait(timeout=300) is not None
    first = te.TrainingManager(tmp_path / "b", learner="ctdl", **TINY)
    first.start(gen * 2, checkpoint_interval=0)
    assert first.wait(timeout=300) is not None
    again = te.TrainingManager(tmp_path / "b", learner="ctdl", **TINY)
    again.start(gen * 4, checkpoint_interval=0, resume=True)
    result = again.wait(timeout=300)
    assert result is not None and result.games == gen * 4
    a, b = straight.evaluator(), again.evaluator()
    assert a.weights("pair_0", 0) == b.weights("pair_0", 0)
    assert [a.weights(p, 0) for p in a.pattern_names] == [b.weights(p, 0) for p in b.pattern_names]


@pytest.mark.parametrize(
    ("normalize", "elite_pairs", "split_at", "race"),
    [
        (0.0, 0, 0, False),
        (0.01, 0, 0, False),
        (0.0, 5, 0, False),
        (0.0, 0, 3, False),
        (0.0, 0, 0, True),
    ],
)
def test_sep_cma_resumed_from_its_checkpoint_equals_a_straight_run(
    tmp_path: Path, normalize: float, elite_pairs: int, split_at: int, race: bool
) -> None:
    cma = {**TINY, "learner": "es", "es_strategy": "sep-cma", "es_parents": 3}
    cma |= {"es_fitness_pairs": 10, "es_fitness_pairs_max": 40, "es_fitness_margin": 1.0}
    cma |= {"es_random_pairs": 2, "es_mean_rate": 0.5, "es_normalize": normalize}
    cma |= {"es_elite_pairs": elite_pairs, "es_elite_every": 1}
    gen = 6 * 2 * (10 + 2)  # the first generations play the smallest sample
    if split_at:
        # Two phases sharing their tables until a generation after the resumption.
        cma |= {"n_phases": 2, "es_split_games": split_at * gen}
    if race:
        # Two searches, a generation each, raced until the checkpoint: the race
        # ends right after the resumption.
        cma |= {"es_portfolio": 2, "es_portfolio_games": 2 * gen, "es_portfolio_pairs": 5}
    straight = te.TrainingManager(tmp_path / "a", **cma)
    straight.start(gen * 4, checkpoint_interval=0)
    done = straight.wait(timeout=300)
    assert done is not None
    first = te.TrainingManager(tmp_path / "b", **cma)
    first.start(gen * 2, checkpoint_interval=0)
    assert first.wait(timeout=300) is not None
    tree, info = ckpt.load_with_info(te.CheckpointManager(tmp_path / "b").list()[-1].path)
    assert info.metadata["config"]["es_strategy"] == "sep-cma"
    assert tree["population"]["cma"]["mean"].dtype == "float64"
    if elite_pairs:
        # The elite is saved with the run, and it is the network the run hands over.
        elite = tree["population"]["elite"]["weights"]
        assert (elite == tree["weights"].reshape(-1)).all()
    else:
        assert "elite" not in tree["population"]
    weights = tree["weights"]
    if race:
        # Saved mid-race: the other search is parked with its own network and state.
        (parked,) = tree["population"]["parked"]
        assert parked["population"]["search"] == 1
        assert parked["network"].shape == (weights.size,)
        assert (parked["network"] != weights.reshape(-1)).any()
    if split_at:
        # Saved while shared: both phases alike, one phase's entries searched.
        assert (weights[0] == weights[1]).all() and weights[0].any()
        assert tree["population"]["cma"]["mean"].shape[0] * 2 == int((weights != 0).sum())
    again = te.TrainingManager(tmp_path / "b", **cma)
    again.start(gen * 4, checkpoint_interval=0, resume=True)
    result = again.wait(timeout=300)
    assert result is not None
    a, b = straight.evaluator(), again.evaluator()
    assert (result.games, result.final_stone_diff) == (done.games, done.final_stone_diff)
    assert [a.weights(p, 0) for p in a.pattern_names] == [b.weights(p, 0) for p in b.pattern_names]
    assert any(v != 0 for v in a.weights("pair_0", 0))
    if split_at:
        assert a.weights("pair_0", 0) != a.weights("pair_0", 1), "split: each phase its own"
    if race:
        # The race ended after the resumption: one search goes on alone.
        last, _ = ckpt.load_with_info(te.CheckpointManager(tmp_path / "b").list()[-1].path)
        assert "parked" not in last["population"]
    if normalize:
        # The live weights (one per symmetry class, and the bias) are held at the cap.
        mean = tree["population"]["cma"]["mean"]
        assert abs(float((mean**2).mean()) ** 0.5 - normalize) < 1e-9


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("learner", "ga", "'td', 'ctdl' or 'es'"),
        ("es_sigma", 0.0, "1e-6 to 10.0"),
        ("es_offspring", 0, "1 to 256"),
        ("ctdl_population", 3, "an even number from 2 to 64"),
        ("es_strategy", "cma", "'plus' or 'sep-cma'"),
        ("es_fitness_margin", -1.0, "0.0 \\(points only\\) to 100.0"),
        ("es_mean_rate", 2.0, "0.01 to 1.0"),
        ("es_random_pairs", 10**6, "0 \\(the heuristic only\\) to 100000"),
        ("es_normalize", -1.0, "0.0 \\(off\\) or 0.001 to 1000.0"),
        ("es_fitness_step", 11.0, "0.0 \\(key on the step itself\\) or 0.0001 to 10.0"),
        ("es_fitness_pairs_max", 5, "0 \\(a fixed sample\\) or es_fitness_pairs \\(100\\)"),
        ("td_heuristic_games", 1.5, "0.0 \\(self-play only\\) to 1.0"),
        ("es_elite_pairs", 10**6, "0 \\(off\\) to 100000"),
        ("es_elite_every", 0, "1 to 1000000"),
        ("es_split_games", 10**6, "0 unless es_strategy is 'sep-cma' and n_phases is above 1"),
        ("es_portfolio", 17, "1 \\(one search\\) to 16"),
        ("es_portfolio_games", 10**6, "0 unless es_portfolio is above 1"),
        ("es_portfolio_pairs", 0, "1 to 100000"),
    ],
)
def test_bad_learner_settings_raise_config_error_naming_the_field(
    tmp_path: Path, field: str, value: object, allowed: str
) -> None:
    with pytest.raises(te.ConfigError, match=allowed) as info:
        te.TrainingManager(tmp_path, **{field: value})
    assert info.value.field == field


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainsvc_engine._cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_trains_each_learner_and_evaluates_against_a_fixed_engine(tmp_path: Path) -> None:
    common = ["--pattern-set", "straight2", "--phases", "1", "--threads", "2", "--json"]
    es_dir, ctdl_dir = tmp_path / "es", tmp_path / "ctdl"
    proc = _cli(
        "train", "--dir", str(es_dir), "--games", "3000", "--learner", "es",
        "--es-offspring", "6", "--es-fitness-pairs", "20", "--callback-interval", "320",
        "--es-strategy", "sep-cma", "--es-parents", "3", "--es-fitness-margin", "0.5",
        *common,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["games"] >= 3000
    es_info = ckpt.load_with_info(te.CheckpointManager(es_dir).list()[-1].path)[1]
    es_config = es_info.metadata["config"]
    assert (es_config["es_strategy"], es_config["es_fitness_margin"]) == ("sep-cma", 0.5)
    proc = _cli(
        "train", "--dir", str(ctdl_dir), "--games", "600", "--learner", "ctdl",
        "--ctdl-population", "4", "--ctdl-td-games", "64", "--ctdl-match-pairs", "4",
        "--td-heuristic-games", "0.5", *common,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    info = ckpt.load_with_info(te.CheckpointManager(ctdl_dir).list()[-1].path)[1]
    assert info.metadata["config"]["learner"] == "ctdl"
    assert info.metadata["config"]["ctdl_population"] == 4
    assert info.metadata["config"]["td_heuristic_games"] == 0.5
    proc = _cli("evaluate", str(es_dir), "--pairs", "50", "--against", str(ctdl_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    results = {r["opponent"]: r for r in json.loads(proc.stdout)["results"]}
    assert set(results) == {"random", "heuristic", str(ctdl_dir)}
    assert results[str(ctdl_dir)]["games"] == 100
    proc = _cli(
        "train", "--dir", str(tmp_path / "x"), "--learner", "es", "--es-sigma", "0", "--json"
    )
    assert proc.returncode == 1 and "es_sigma" in proc.stdout
