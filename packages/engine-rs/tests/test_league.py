"""League matches from Python: validation by field, and the endgame solver option."""

from __future__ import annotations

import pytest
import trainsvc_engine as te


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pairs": 0}, r"pairs: got 0; allowed: 1 to 100000"),
        ({"depth": 9}, r"depth: got 9; allowed: 1 to 8"),
        ({"random_rate": 1.5}, r"random_rate: got 1.5; allowed: 0.0 to 1.0"),
        ({"exact_empties": 17}, r"exact_empties: got 17; allowed: 0 to 16"),
    ],
)
def test_out_of_range_settings_name_the_field(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(te.ConfigError, match=message):
        te.Evaluator().league("heuristic", **kwargs)  # type: ignore[arg-type]


def test_exact_endgames_raise_the_score_of_an_untrained_engine() -> None:
    # Zero weights play the lowest legal square: the solver's last 10 moves
    # must win clearly more of the same games (same seed, same random moves).
    ev = te.Evaluator()
    plain = ev.league("heuristic", pairs=100, seed=4)
    solved = ev.league("heuristic", pairs=100, seed=4, exact_empties=10)
    assert plain["games"] == solved["games"] == 200
    assert solved["score"] > plain["score"] + plain["ci95"], (plain, solved)
