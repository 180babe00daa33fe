"""The direction of imports: no cycle among the modules of the packages, none against the grain.

Imports are read with ``ast`` from the source, at module level and inside functions alike (an
import inside a function is still a dependency; hiding a cycle there only delays it), relative
ones resolved. Importing ``a.b.c`` also runs ``a`` and ``a.b`` (their ``__init__``), so those count
as imported too, except the importer's own packages (they have run before it). The grain
(docs/ARCHITECTURE.md):

    pipeline -> evaluation -> stages -> stages/render, priors
    pipeline -> training -> evaluation, stages, priors
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages", "priors", "evaluation", "training")
"""The packages checked; one that does not exist (yet) is left out."""
FORBIDDEN = (
    ("stages", ("pipeline", "evaluation")),
    ("priors", ("stages", "pipeline", "evaluation")),
    ("stages.render", ("stages", "priors", "pipeline", "evaluation")),
    ("evaluation", ("pipeline", "training")),
    ("training", ("pipeline",)),
)
"""``(importer, what it must not import)``, by package prefix; a module's own package is allowed."""


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """``{dotted module name: file}`` of every ``.py`` file of ``packages`` under ``root``."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")) if (root / package).is_dir() else ():
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _within(name: str, known: dict[str, Path]) -> set[str]:
    """The known modules that importing ``name`` runs: its longest known prefix and that prefix's packages."""
    parts = name.split(".")
    hit = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in known), None)
    if hit is None:
        return set()
    pieces = hit.split(".")
    return {".".join(pieces[:i]) for i in range(1, len(pieces) + 1)} & set(known)


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every dotted name an ``import`` anywhere in ``tree`` (functions included) may bring in.

    ``from a import b`` gives both ``a`` and ``a.b`` (``b`` may be a submodule); relative imports
    are resolved against ``module``.
    """
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    """``{module: modules of packages it imports}`` for the packages under ``root``."""
    known = module_files(root, packages)
    graph = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for imported in imported_names(tree, name, path.name == "__init__.py"):
            targets |= _within(imported, known)
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = targets - own - {name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one (Tarjan's algorithm).

    >>> find_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})
    [['a', 'b', 'a']]
    """
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                cycles.append(_cycle_in(graph, component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A path ``start -> ... -> start`` inside a strongly connected ``component`` (breadth first)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, set()) & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def against_the_grain(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b"`` for each import that :data:`FORBIDDEN` rules out."""

    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    bad = []
    for src, targets in sorted(graph.items()):
        for importer, banned in FORBIDDEN:
            if not under(src, importer):
                continue
            for dst in sorted(targets):
                if any(under(dst, b) for b in banned) and not under(dst, importer):
                    bad.append(f"{src} -> {dst}")
    return sorted(set(bad))


def test_no_import_cycle_among_the_packages():
    graph = import_graph()
    assert "pipeline.cli.main" in graph and "stages.render.cameras" in graph  # the graph is the real one
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_import_against_the_grain():
    bad = against_the_grain(import_graph())
    assert not bad, "imports against the grain:\n" + "\n".join(bad)


def test_cycle_finder_on_small_graphs():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) == []
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"a"}}) == [["a", "a"]]
    two = find_cycles({"a": {"b"}, "b": {"a"}, "x": {"y"}, "y": {"z"}, "z": {"x", "a"}})
    assert sorted(two) == [["a", "b", "a"], ["x", "y", "z", "x"]]


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_a_cycle_through_a_function_level_or_relative_import_is_found(tmp_path):
    _write(tmp_path, {
        "pipeline/__init__.py": "",
        "pipeline/batch/__init__.py": "",
        "pipeline/batch/job.py": "def setup():\n    from pipeline.cli.main import setup_logging\n",
        "pipeline/cli/__init__.py": "",
        "pipeline/cli/main.py": "def cmd():\n    from ..batch import job\n",
        "pipeline/cli/tools.py": "from . import main\n",
    })
    graph = import_graph(tmp_path)  # no stages/, priors/ or evaluation/ here: they are left out
    assert graph["pipeline.cli.main"] == {"pipeline.batch", "pipeline.batch.job"}
    assert graph["pipeline.cli.tools"] == {"pipeline.cli.main"}
    assert find_cycles(graph) == [["pipeline.batch.job", "pipeline.cli.main", "pipeline.batch.job"]]


def test_imports_against_the_grain_are_named(tmp_path):
    _write(tmp_path, {
        "stages/__init__.py": "",
        "stages/loop.py": "import torch\nfrom stages.render import cameras\n",
        "stages/geometry_init.py": "def run():\n    import pipeline.run.store\n",
        "stages/render/__init__.py": "",
        "stages/render/cameras.py": "from stages import loop\nfrom . import volume\n",
        "stages/render/volume.py": "",
        "priors/__init__.py": "",
        "priors/sds.py": "from stages.render.cameras import orbit\n",
        "pipeline/__init__.py": "",
        "pipeline/run/__init__.py": "",
        "pipeline/run/store.py": "import stages.loop\nimport evaluation.metrics\n",
        "evaluation/__init__.py": "",
        "evaluation/metrics.py": "from stages.render import volume\nfrom pipeline.run import store\n",
    })
    assert against_the_grain(import_graph(tmp_path)) == [
        "evaluation.metrics -> pipeline", "evaluation.metrics -> pipeline.run",
        "evaluation.metrics -> pipeline.run.store",
        "priors.sds -> stages", "priors.sds -> stages.render", "priors.sds -> stages.render.cameras",
        "stages.geometry_init -> pipeline", "stages.geometry_init -> pipeline.run",
        "stages.geometry_init -> pipeline.run.store",
        "stages.render.cameras -> stages.loop",
    ]
