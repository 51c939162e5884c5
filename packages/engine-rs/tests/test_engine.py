"""The bindings: perft, boards, evaluation with validation, search, thread safety."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import trainsvc_engine as te


def test_perft_from_python_matches_the_standard_table() -> None:
    assert [te.perft(d) for d in range(1, 8)] == [4, 12, 56, 244, 1396, 8200, 55092]


def test_board_helpers_play_a_game_to_the_end() -> None:
    b = te.Board()
    assert b.legal_moves() == [19, 26, 37, 44]
    assert te.square_name(19) == "d3"
    b = b.play("d3")
    assert b.player == 2
    assert b.disc_counts() == (4, 1)
    with pytest.raises(te.InvalidMoveError, match="not legal"):
        b.play("a1")
    with pytest.raises(te.InvalidMoveError):
        b.pass_turn()
    assert te.Board(b.cells(), 2) == b
    while not b.is_game_over():
        b = b.play(b.legal_moves()[0]) if b.legal_moves() else b.pass_turn()
    black, white = b.disc_counts()
    assert black + white <= 64


@pytest.mark.parametrize(
    ("board", "player", "message"),
    [
        ([0] * 63, 1, "64 cells, got 63"),
        ([0] * 10 + [3] + [0] * 53, 1, "cell 10 has value 3"),
        ([0] * 64, 3, "player: got 3"),
        ("x" * 64, 1, "got a str"),
        ([0.5] * 64, 1, "sequence of 64 integers"),
    ],
)
def test_bad_boards_raise_value_errors_naming_what_is_wrong(
    board: object, player: int, message: str
) -> None:
    ev = te.Evaluator(pattern_set="small", n_phases=1)
    with pytest.raises(ValueError, match=message) as info:
        ev.evaluate(board, player)
    assert isinstance(info.value, te.InvalidBoardError)
    assert isinstance(info.value, te.EngineError)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> te.Evaluator:
    # Adam keeps early values off the rails; plain TD (the default) saturates
    # the opening positions at exactly +-1.0 within a few hundred games (see
    # docs/othello-engine.md), which the range check below would reject.
    m = te.TrainingManager(
        tmp_path_factory.mktemp("run"),
        pattern_set="small",
        n_phases=2,
        threads=1,
        optimizer="adam",
        learning_rate=0.002,
        **{"lambda": 0.8},
    )
    m.start(512, checkpoint_interval=0)
    assert m.wait(timeout=120) is not None
    return m.evaluator()


def _positions(n: int) -> list[te.Board]:
    out = []
    b = te.Board()
    while len(out) < n:
        if b.is_game_over():
            b = te.Board()
        out.append(b)
        moves = b.legal_moves()
        b = b.play(moves[len(out) % len(moves)]) if moves else b.pass_turn()
    return out


def test_evaluation_is_black_positive_and_numpy_batches_agree_with_single_calls(
    trained: te.Evaluator,
) -> None:
    assert te.Evaluator(pattern_set="small", n_phases=2).evaluate(te.Board()) == 0.0
    boards = _positions(40)
    arr = np.array([x.cells() for x in boards], dtype=np.int8)
    players = [x.player for x in boards]
    batch = trained.evaluate_batch(arr, players)
    single = [trained.evaluate(arr[i], players[i]) for i in range(len(boards))]
    assert batch == single
    assert any(v != 0.0 for v in batch)
    assert all(-1.0 < v < 1.0 for v in batch)
    # The same discs with the other side to move: values are from black's view either way.
    assert trained.evaluate(boards[0]) == trained.evaluate(boards[0].cells(), 1)
    # A position where black has many more discs than white scores positive.
    cells = [1] * 40 + [2] * 4 + [0] * 20
    assert trained.evaluate(cells, 1) > trained.evaluate(
        [2 if c == 1 else 1 if c == 2 else 0 for c in cells], 1
    )


def test_best_move_is_legal_and_exact_in_the_endgame() -> None:
    ev = te.Evaluator(pattern_set="small", n_phases=1)
    r = ev.best_move(te.Board(), depth=3)
    assert r.move in te.Board().legal_moves()
    # A late position: 10 empties, solved exactly.
    b = te.Board()
    rng = np.random.default_rng(3)
    while 64 - sum(b.disc_counts()) > 10 and not b.is_game_over():
        moves = b.legal_moves()
        b = b.play(int(rng.choice(moves))) if moves else b.pass_turn()
    if b.legal_moves():
        r = ev.best_move(b, exact_empties=12)
        assert r.exact_diff is not None
        assert r.move in b.legal_moves()
    with pytest.raises(te.ConfigError, match="depth"):
        ev.best_move(te.Board(), depth=0)


def test_concurrent_calls_from_threads_are_safe_and_agree() -> None:
    ev = te.Evaluator(pattern_set="small", n_phases=1)
    expected = ev.best_move(te.Board().play("d3"), depth=5).square
    results: list[str | None] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(ev.best_move(te.Board().play("d3"), depth=5).square)
                ev.evaluate_batch(np.zeros((50, 64), dtype=np.int64), 1)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [expected] * 20


def test_weight_access_and_pattern_views() -> None:
    ev = te.Evaluator(pattern_set="small", n_phases=2)
    assert ev.pattern_names == ["corner3x3", "edge2x", "diag8"]
    assert len(ev.weights("corner3x3", 1)) == 3**9
    assert ev.weights("bias", 0) == [0.0]
    with pytest.raises(te.ConfigError, match="phase: got 2"):
        ev.weights("corner3x3", 2)
    with pytest.raises(te.ConfigError, match="pattern"):
        ev.weights("nope", 0)
    view = te.Debug.pattern_ascii(ev, "corner3x3")
    assert view.splitlines()[0].startswith("0 1 2 .")


def test_config_errors_name_the_field_and_range() -> None:
    with pytest.raises(te.ConfigError, match=r"n_phases: got 0; allowed: 1 to 60"):
        te.Evaluator(n_phases=0)
    with pytest.raises(ValueError, match="pattern_set"):
        te.Evaluator(pattern_set="huge")


def test_config_errors_carry_the_field_as_an_attribute(tmp_path: Path) -> None:
    with pytest.raises(te.ConfigError) as info:
        te.Evaluator(n_phases=0)
    assert info.value.field == "n_phases"
    with pytest.raises(te.ConfigError) as info:
        te.TrainingManager(tmp_path / "run", **{"lambda": 1.5})
    assert info.value.field == "lambda"
    with pytest.raises(te.ConfigError) as info:
        te.Evaluator().best_move(te.Board(), depth=0)
    assert info.value.field == "depth"
    with pytest.raises(te.ConfigError) as info:
        te.perft(21)
    assert info.value.field == "depth"
    # One raised from Python has no field.
    assert te.ConfigError("x").field is None
