"""Check the monorepo's import graph: no import runs up the layers, no import cycle.

Reads every module under ``packages/*/src``, ``services/*/src`` and
``clients/*/src`` (tests, benchmarks and tools are left out: they may import
anything), without importing any of them, and checks:

- layers: a package imports only packages of a lower layer (DESIGN.md's order:
  checkpoint, trackers -> engine, trainer, lm -> trajectories -> launchers ->
  the wire API -> the service -> the clients); so libraries never import the
  service or a client; and clients never import the service (only its wire API);
- grpc: only the wire API, the service and the clients import grpc;
- public API: a package imports another's public names only, never one of its
  private modules (``pkg._module``): what a library exports is its contract;
- cycles: no cycle among one package's modules, counting the imports that run
  when a module is imported (top level, not under ``if TYPE_CHECKING``); imports
  inside functions run later and cannot deadlock an import.

Usage: ``python tools/import_graph.py [--graph]`` prints the package graph (with
``--graph``, every module edge too) and exits 1 when a rule is broken, naming
the file and line of each offending import.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE_GLOBS = ("packages/*/src/*", "services/*/src/*", "clients/*/src/*")

LAYERS: dict[str, int] = {
    "trainsvc_checkpoint": 0,
    "trainsvc_trackers": 0,
    "trainsvc_engine": 1,
    "trainsvc_trainer": 1,
    "trainsvc_lm": 1,
    "trainsvc_trajectories": 2,
    "trainsvc_launchers": 3,
    "trainsvc_api": 4,
    "trainsvc": 5,
    "trainsvc_client": 6,
    "trainsvc_dashboard": 7,
}
"""Each first-party package's layer: it may import only packages of a lower one."""
GRPC_FROM_LAYER = LAYERS["trainsvc_api"]
"""Packages below this layer (the libraries) must not import grpc."""
WIRE_ONLY = {"trainsvc_client": "trainsvc", "trainsvc_dashboard": "trainsvc"}
"""Clients reach the service over the wire only: they import its API package, never it."""
NOT_MODULES = {
    "trainsvc_launchers._assets.trainsvc_bootstrap": "a script the Kaggle launcher uploads and "
    "runs on the remote machine, where the whole stack is installed; the package only reads it",
}
"""Files under a package's source that the package never imports, with why they may import
anything."""


@dataclass(frozen=True)
class Import:
    """One import statement's target, where it is, and whether it runs at import time."""

    source: str
    target: str
    path: Path
    line: int
    eager: bool


def _modules(root: Path) -> Iterator[tuple[str, Path]]:
    for glob in SOURCE_GLOBS:
        for pkg in sorted(root.glob(glob)):
            if not (pkg / "__init__.py").exists():
                continue
            for path in sorted(pkg.rglob("*.py")):
                rel = path.relative_to(pkg.parent).with_suffix("")
                parts = list(rel.parts)
                if parts[-1] == "__init__":
                    parts.pop()
                yield ".".join(parts), path


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, eager: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import under ``node``; eager: it runs when the module is imported."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, eager
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk(child, False)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.body:
                yield from _walk_stmt(sub, False)
            for sub in child.orelse:
                yield from _walk_stmt(sub, eager)
        else:
            yield from _walk(child, eager)


def _walk_stmt(stmt: ast.stmt, eager: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    if isinstance(stmt, ast.Import | ast.ImportFrom):
        yield stmt, eager
    else:
        yield from _walk(stmt, eager)


def imports(root: Path = REPO) -> tuple[set[str], list[Import]]:
    """Every first-party module, and every import of a first-party module or of grpc."""
    modules = dict(_modules(root))
    found: list[Import] = []
    for name, path in modules.items():
        if name in NOT_MODULES:
            continue
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, eager in _walk(tree, True):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    if not is_package:
                        anchor = anchor[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # ``from pkg import sub`` imports the submodule pkg.sub when there is one.
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            for target in targets:
                top = target.split(".")[0]
                if top in LAYERS or top == "grpc":
                    found.append(Import(name, target, path, node.lineno, eager))
    return set(modules), found


def check(root: Path = REPO) -> tuple[list[str], dict[str, set[str]], dict[str, set[str]]]:
    """Return (problems, package graph, eager module graph)."""
    modules, found = imports(root)
    problems: list[str] = []
    packages: dict[str, set[str]] = {}
    eager: dict[str, set[str]] = {m: set() for m in modules}
    for imp in found:
        src_pkg = imp.source.split(".")[0]
        dst_pkg = imp.target.split(".")[0]
        where = f"{imp.path.relative_to(root)}:{imp.line}"
        if src_pkg not in LAYERS:
            problems.append(f"{where}: package {src_pkg} has no layer in tools/import_graph.py")
            continue
        if dst_pkg == "grpc":
            if LAYERS[src_pkg] < GRPC_FROM_LAYER:
                problems.append(f"{where}: library {src_pkg} imports grpc")
            continue
        if dst_pkg != src_pkg:
            packages.setdefault(src_pkg, set()).add(dst_pkg)
            private = _private_part(imp.target)
            if WIRE_ONLY.get(src_pkg) == dst_pkg:
                problems.append(
                    f"{where}: client {imp.source} imports the service ({imp.target}); "
                    "clients use the wire API (trainsvc_api) only"
                )
            elif LAYERS[dst_pkg] >= LAYERS[src_pkg]:
                problems.append(
                    f"{where}: {imp.source} imports {imp.target}, which is not below it "
                    f"(layer {LAYERS[src_pkg]} -> {LAYERS[dst_pkg]})"
                )
            elif private:
                problems.append(
                    f"{where}: {imp.source} imports {imp.target}, a private module of "
                    f"{dst_pkg} ({private}); import the name from {dst_pkg}'s public API"
                )
        elif imp.eager and imp.target in modules and imp.target != imp.source:
            eager[imp.source].add(imp.target)
    for cycle in cycles(eager):
        problems.append("import cycle among " + ", ".join(cycle))
    return list(dict.fromkeys(problems)), packages, eager


def _private_part(module: str) -> str | None:
    """The first private component of a dotted module name (``_x``, not ``__x__``)."""
    for part in module.split(".")[1:]:
        if part.startswith("_") and not part.startswith("__"):
            return part
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of ``graph``: the modules of each strongly connected component of more
    than one node (Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def main(argv: list[str] | None = None) -> int:
    """Print the package graph (and with ``--graph`` the module graph); 1 if a rule is broken."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--graph", action="store_true", help="also print every module edge")
    parser.add_argument("--root", type=Path, default=REPO, help="the repository (default: this)")
    args = parser.parse_args(argv)
    problems, packages, eager = check(args.root)
    for pkg in sorted(LAYERS, key=lambda p: (LAYERS[p], p)):
        deps = ", ".join(sorted(packages.get(pkg, ()), key=lambda p: (LAYERS[p], p))) or "-"
        print(f"layer {LAYERS[pkg]}  {pkg:24} -> {deps}")
    if args.graph:
        for module in sorted(eager):
            for target in sorted(eager[module]):
                print(f"  {module} -> {target}")
    edges = sum(len(t) for t in eager.values())
    print(f"{len(eager)} modules, {edges} import-time edges inside packages")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print(
            "ok: no import runs up the layers, no client imports the service, "
            "no library imports grpc, no package imports another's private module, "
            "no import cycle"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
