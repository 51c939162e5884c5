"""A state-format change bumps its package's version, with a CHANGELOG entry.

A package that saves training state names its format in a ``STATE_FORMAT``
constant (``"trainsvc-emergence-trainer/4"``). Its CHANGELOG.md must have a
section for the package's current version that names that format: changing the
format without adding the new version's entry fails here (docs/contributing.md,
"Versions and changelogs").
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STATE_FORMAT = re.compile(r'^STATE_FORMAT(?:\s*:[^=]+)?\s*=\s*"([^"]+)"', re.MULTILINE)
HEADING = re.compile(r"^## \[([^\]]+)\]", re.MULTILINE)


def _packages() -> list[Path]:
    return sorted(
        p.parent
        for g in ("packages", "services", "clients")
        for p in (REPO / g).glob("*/pyproject.toml")
    )


def state_formats(package: Path) -> list[str]:
    """The ``STATE_FORMAT`` values defined in a package's sources."""
    found = []
    for source in sorted((package / "src").rglob("*.py")):
        found += STATE_FORMAT.findall(source.read_text(encoding="utf-8"))
    return found


def changelog_section(changelog: str, version: str) -> str | None:
    """The text of the ``## [version]`` section (up to the next ``## [``), or None."""
    headings = list(HEADING.finditer(changelog))
    for i, heading in enumerate(headings):
        if heading.group(1) == version:
            end = headings[i + 1].start() if i + 1 < len(headings) else len(changelog)
            return changelog[heading.end() : end]
    return None


def test_section_lookup_reads_only_the_named_version() -> None:
    text = "# Changelog\n\n## [Unreleased]\n- a/3\n\n## [0.2.0] - unreleased\n- a/2\n\n## [0.1.0]\n- a/1\n"
    assert changelog_section(text, "0.2.0") == " - unreleased\n- a/2\n\n"
    assert changelog_section(text, "0.1.0") == "\n- a/1\n"
    assert changelog_section(text, "0.3.0") is None


PACKAGES_WITH_STATE = [p for p in _packages() if state_formats(p)]


def test_the_check_sees_the_state_formats() -> None:
    # The trainer and the language-model package save training state today.
    names = {p.name for p in PACKAGES_WITH_STATE}
    assert {"trainer", "lm"} <= names, names


@pytest.mark.parametrize("package", PACKAGES_WITH_STATE, ids=lambda p: p.name)
def test_the_current_version_has_a_changelog_entry_naming_its_state_format(
    package: Path,
) -> None:
    project = tomllib.loads((package / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    version = project["version"]
    section = changelog_section((package / "CHANGELOG.md").read_text(encoding="utf-8"), version)
    assert section is not None, (
        f"{package.name}/CHANGELOG.md has no '## [{version}]' section for its current version"
    )
    for state_format in state_formats(package):
        assert f"`{state_format}`" in section, (
            f"{package.name}: STATE_FORMAT is {state_format!r} but the CHANGELOG section for "
            f"{version} does not name it: a state-format change bumps the package's version "
            "and adds that version's CHANGELOG entry (docs/contributing.md)"
        )
