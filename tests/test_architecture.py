"""The import structure of app/ and workers/: the layer contracts hold and nothing cycles.

(a) `lint-imports` checks the contracts of pyproject.toml `[tool.importlinter]` (layers
    adapters > flows > services > bus > ml > analysis > core, app never imports workers,
    services never import flows or adapters; see docs/INTERNALS.md).
(b) The module import graph, imports inside functions included, has no cycle. A package's
    `__init__` importing its own submodules is a re-export, not a dependency (the same
    rule as ../shared/tools/import_cycles.py), so facades such as app.services.registry
    do not count as cycles with their submodules.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "workers")


def _import_graph(*packages: str) -> grimp.ImportGraph:
    # cache_dir=None: several checkouts and test runs share a tree; no cache to go stale.
    return grimp.build_graph(*packages, include_external_packages=False, cache_dir=None)


def _dependencies(graph: grimp.ImportGraph) -> dict[str, set[str]]:
    """Module → the modules it imports, minus a package's imports of its own submodules."""
    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        imported = graph.find_modules_directly_imported_by(module)
        if graph.find_children(module):  # a package: its __init__ re-exports children
            imported = {m for m in imported if not m.startswith(module + ".")}
        edges[module] = set(imported)
    return edges


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on deep graphs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in edges:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _cycle_through(start: str, members: Iterable[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest import path start → … → start inside one strongly connected component."""
    allowed = set(members)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges[node] & allowed):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is in a component without a cycle through it")


def _describe(cycle: list[str], graph: grimp.ImportGraph) -> str:
    steps = []
    for importer, imported in pairwise(cycle):
        lines = sorted(
            d["line_number"]
            for d in graph.get_import_details(importer=importer, imported=imported)
        )
        where = f" (l.{', l.'.join(map(str, lines))})" if lines else ""
        steps.append(f"{importer} -> {imported}{where}")
    return "\n    ".join(steps)


def _cycles(graph: grimp.ImportGraph) -> list[str]:
    edges = _dependencies(graph)
    found = []
    for component in _strongly_connected(edges):
        if len(component) > 1:
            cycle = _cycle_through(component[0], component, edges)
            found.append(
                f"cycle among {len(component)} modules ({', '.join(component)}):\n    "
                + _describe(cycle, graph)
            )
    return found


def test_import_contracts_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.exists(), f"{lint_imports} missing: pip install -e '.[test]'"
    # Run from the root without naming a file: lint-imports then reads pyproject.toml,
    # unless a setup.cfg or .importlinter (which it prefers) holds contracts elsewhere.
    assert not (ROOT / ".importlinter").exists() and not (ROOT / "setup.cfg").exists()
    result = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, (
        f"lint-imports found broken import contracts:\n{result.stdout}\n{result.stderr}"
    )


def test_no_import_cycles_function_level_imports_included():
    cycles = _cycles(_import_graph(*PACKAGES))
    assert not cycles, "import cycles in app/ and workers/:\n" + "\n".join(cycles)


def test_cycle_check_sees_imports_inside_functions(tmp_path):
    """The check above relies on grimp reading imports inside function bodies too."""
    name = f"archprobe_{uuid.uuid4().hex[:8]}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(f"from {name} import b\n")
    (package / "b.py").write_text(
        textwrap.dedent(
            f"""
            def later():
                from {name}.a import something  # lazy: the cycle a -> b -> a
                return something
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        cycles = _cycles(_import_graph(name))
    finally:
        sys.path.remove(str(tmp_path))
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]
    assert len(cycles) == 1, cycles
    assert f"{name}.a -> {name}.b (l.1)" in cycles[0]
    assert f"{name}.b -> {name}.a (l.3)" in cycles[0]
