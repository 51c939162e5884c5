"""The Kaggle notebook, generated from the bootstrapper script (one source for both).

The bootstrapper is written in the "percent" format: ``# %%`` starts a code
cell and ``# %% [markdown]`` a markdown cell whose lines are ``#`` comments.
``notebooks/kaggle_training.ipynb`` is this module's output; a test checks
that the committed notebook is up to date and valid nbformat.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat

from trainsvc_launchers._files import write_text_atomic
from trainsvc_launchers._kaggle_kernel import bootstrap_source

_nbf: Any = nbformat  # nbformat ships no type hints

__all__ = ["build_notebook", "write_notebook"]


def _cells(source: str) -> list[tuple[str, str]]:
    cells: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if line.startswith("# %%"):
            kind = "markdown" if "[markdown]" in line else "code"
            cells.append((kind, []))
            continue
        if not cells:
            cells.append(("code", []))
        cells[-1][1].append(line)
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines]
        text = "\n".join(lines).strip("\n")
        if text:
            out.append((kind, text))
    return out


def build_notebook(source: str | None = None) -> Any:
    """The notebook (an ``nbformat`` v4 node), validated."""
    nb = _nbf.v4.new_notebook()
    for kind, text in _cells(source if source is not None else bootstrap_source()):
        cell = (
            _nbf.v4.new_markdown_cell(text) if kind == "markdown" else _nbf.v4.new_code_cell(text)
        )
        cell.pop("id", None)
        nb.cells.append(cell)
    nb.nbformat_minor = 4
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "kaggle": {"accelerator": "gpu", "isInternetEnabled": True},
    }
    _nbf.validate(nb)
    return nb


def notebook_text(source: str | None = None) -> str:
    """The notebook as the UTF-8 JSON text that is committed."""
    return str(_nbf.writes(build_notebook(source))) + "\n"


def write_notebook(path: Path) -> None:
    """Write the generated notebook to ``path``."""
    write_text_atomic(path, notebook_text())
