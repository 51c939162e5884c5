"""tools/import_graph.py: the monorepo's imports point down the layers, without cycles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "import_graph.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120
    )


def test_the_repository_imports_only_down_the_layers_and_has_no_cycle() -> None:
    result = _run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: no import runs up the layers, no client imports the service" in result.stdout
    assert "trainsvc_client          -> trainsvc_api\n" in result.stdout  # not the service


def _module(root: Path, package: str, dist: str, module: str, text: str) -> None:
    path = root / dist / "src" / package / f"{module}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "__init__.py").touch()
    path.write_text(text, encoding="utf-8")


def test_it_names_each_broken_rule(tmp_path: Path) -> None:
    ckpt = ("trainsvc_checkpoint", "packages/checkpoint")
    _module(tmp_path, *ckpt, "_a", "from trainsvc_checkpoint import _b\n")
    _module(tmp_path, *ckpt, "_b", "from . import _a\n")
    _module(tmp_path, *ckpt, "_c", "def f():\n    import grpc\n")
    # Imports inside functions do not make import-time cycles; only type checkers see these.
    _module(tmp_path, *ckpt, "_d", "def f():\n    from trainsvc_checkpoint import _e\n")
    _module(
        tmp_path,
        *ckpt,
        "_e",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import _d\n",
    )
    _module(tmp_path, "trainsvc_client", "clients/cli", "_x", "import trainsvc._server\n")
    _module(tmp_path, "trainsvc", "services/trainsvc", "_server", "import trainsvc_client\n")
    # Another package's private module, even inside a function; its public names are fine.
    _module(
        tmp_path,
        "trainsvc_trainer",
        "packages/trainer",
        "_y",
        "from trainsvc_checkpoint import save\ndef f():\n    from trainsvc_checkpoint._a import g\n",
    )
    result = _run("--root", str(tmp_path), "--graph")
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert "error: import cycle among trainsvc_checkpoint._a, trainsvc_checkpoint._b" in errors
    assert any("_c.py:2: library trainsvc_checkpoint imports grpc" in e for e in errors)
    assert any(
        "clients/cli/src/trainsvc_client/_x.py:1: client trainsvc_client._x imports the service"
        in e
        for e in errors
    )
    assert not any("_d" in e or "_e" in e for e in errors), errors
    assert any(
        "services/trainsvc/src/trainsvc/_server.py:1: trainsvc._server imports trainsvc_client, "
        "which is not below it" in e
        for e in errors
    )
    assert any(
        "packages/trainer/src/trainsvc_trainer/_y.py:3: trainsvc_trainer._y imports "
        "trainsvc_checkpoint._a, a private module of trainsvc_checkpoint" in e
        for e in errors
    )
    assert len(errors) == 5, errors
