"""`make test` sets up the browser tests' Chromium itself (.ci/ensure-chromium, run
before any test starts): apt-get as root, `sudo -n` otherwise, else one line saying
what to run. Driven with stand-ins for id, sudo and apt-get on PATH."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "ensure-chromium"
MISSING = "trainsvc-test-chromium"  # a browser name nothing provides until "installed"


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def _run(
    tmp_path: Path, uid: int, sudo_ok: bool | None
) -> tuple[subprocess.CompletedProcess[str], str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    _stub(bin_dir, "id", f"echo {uid}")
    # apt-get records its arguments; `install` provides the browser
    _stub(
        bin_dir,
        "apt-get",
        f'echo "apt-get $*" >> {calls}\n'
        f'case "$*" in *install*) printf "#!/bin/sh\\n" > {bin_dir}/{MISSING}; '
        f"chmod +x {bin_dir}/{MISSING};; esac",
    )
    if sudo_ok is not None:
        rest = 'shift; [ "$1" = true ] && exit 0; echo "sudo $*" >> ' + str(calls) + '; exec "$@"'
        _stub(bin_dir, "sudo", f'[ "$1" = -n ] || exit 9\n{rest}' if sudo_ok else "exit 1")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "CHROMIUM": MISSING,
        "HOME": os.environ.get("HOME", "/tmp"),
    }
    proc = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    return proc, calls.read_text() if calls.exists() else ""


def test_root_installs_chromium_with_apt_get(tmp_path: Path) -> None:
    proc, calls = _run(tmp_path, uid=0, sudo_ok=None)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^apt-get install -y .*chromium", calls, re.M), calls
    assert "sudo" not in calls


def test_a_user_with_passwordless_sudo_installs_it_with_sudo_n(tmp_path: Path) -> None:
    proc, calls = _run(tmp_path, uid=1000, sudo_ok=True)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^sudo apt-get install -y .*chromium", calls, re.M), calls


def test_otherwise_one_line_says_what_to_run(tmp_path: Path) -> None:
    proc, calls = _run(tmp_path, uid=1000, sudo_ok=False)
    assert proc.returncode == 1
    assert calls == ""  # nothing was attempted
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "apt-get install -y chromium" in lines[0]


def test_an_installed_chromium_needs_nothing(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, MISSING, "")
    _stub(bin_dir, "apt-get", "exit 7")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CHROMIUM": MISSING}
    proc = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_make_test_sets_up_the_browser_before_any_test() -> None:
    text = (REPO / "Makefile").read_text()
    prereqs = re.search(r"^test: (.*?)##", text, re.M)
    assert prereqs is not None
    order = prereqs.group(1).split()
    assert "browser" in order and order.index("browser") < order.index("pytest")
    assert re.search(r"^browser:.*\n\t@?\.ci/ensure-chromium", text, re.M)
    assert "postgresql" in order and order.index("postgresql") < order.index("pytest")
    ci = (REPO / ".ci" / "run").read_text()
    # CI is the README's command plus the stale-page check: the set-up is make test's
    assert "make test" in ci
    assert "apt-get" not in ci and "ensure-" not in ci
