"""Input paths from requests: only existing files inside the service's input directories."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainsvc._domain import InvalidArgumentError
from trainsvc._paths import InputRoots


@pytest.fixture
def roots(tmp_path: Path) -> InputRoots:
    (tmp_path / "in" / "model").mkdir(parents=True)
    (tmp_path / "in" / "train.jsonl").write_text("{}\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "secret.txt").write_text("no\n")
    return InputRoots.of([tmp_path / "in"])


def test_a_file_and_a_directory_inside_resolve_to_their_real_paths(
    roots: InputRoots, tmp_path: Path
) -> None:
    inside = tmp_path / "in"
    assert (
        roots.resolve(str(inside / "train.jsonl"), "f", expect="file")
        == (inside / "train.jsonl").resolve()
    )
    dotted = f"{inside}/model/../model"
    assert roots.resolve(dotted, "f", expect="dir") == (inside / "model").resolve()


@pytest.mark.parametrize(
    ("relative", "expect", "words"),
    [
        ("out/secret.txt", "file", "outside the directories"),
        ("in/../out/secret.txt", "file", "outside the directories"),
        ("in/missing.jsonl", "file", "does not exist"),
        ("in/model", "file", "not a regular file"),
        ("in/train.jsonl", "dir", "not a directory"),
    ],
)
def test_bad_paths_are_refused_naming_the_field(
    roots: InputRoots, tmp_path: Path, relative: str, expect: str, words: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=words) as info:
        roots.resolve(str(tmp_path / relative), "run.lora.train_file", expect=expect)  # type: ignore[arg-type]
    assert info.value.field == "run.lora.train_file"


def test_a_symlink_inside_that_points_outside_is_refused(roots: InputRoots, tmp_path: Path) -> None:
    link = tmp_path / "in" / "link.txt"
    link.symlink_to(tmp_path / "out" / "secret.txt")
    with pytest.raises(InvalidArgumentError, match="outside"):
        roots.resolve(str(link), "run.lora.train_file", expect="file")


@pytest.mark.parametrize("value", ["", 7, None, "a\0b", "x" * 5000])
def test_values_that_are_not_usable_paths_are_refused(roots: InputRoots, value: object) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        roots.resolve(value, "run.lora.model", expect="dir")
    assert info.value.field == "run.lora.model"
    assert len(str(info.value)) < 600  # a huge value is not echoed back whole
