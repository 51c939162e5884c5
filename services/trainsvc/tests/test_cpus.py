"""CPU lists as `serve --worker-cpus` takes them (taskset -c syntax)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from trainsvc._cpus import format_cpu_list, parse_cpu_list


def test_lists_and_ranges() -> None:
    assert parse_cpu_list("3") == {3}
    assert parse_cpu_list("0-3,6, 8-9") == {0, 1, 2, 3, 6, 8, 9}
    assert format_cpu_list({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"


@given(st.sets(st.integers(0, 300), min_size=1))
def test_format_then_parse_is_the_identity(cpus: set[int]) -> None:
    assert parse_cpu_list(format_cpu_list(cpus)) == cpus


@pytest.mark.parametrize("text", ["", "a", "1-", "-1", "1,,2", "2-1", "1.5", "0x1"])
def test_malformed_lists_say_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError, match=r"0-3,6|ends before it starts"):
        parse_cpu_list(text)
