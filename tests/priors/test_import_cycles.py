"""No two priors modules import each other, directly or through others (imports inside functions
count too: a cycle hidden in a function is still a cycle)."""
import ast
from pathlib import Path

import priors

PACKAGE = Path(priors.__path__[0])


def priors_imports(source: str) -> set[str]:
    """Names of the priors modules a source imports (``from priors.x import``, ``from priors import x``)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "priors":
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("priors."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("priors."))
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as a path that ends where it starts, or [] when there is none."""
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"prior_3d": {"zero123_ldm", "sds"}, "zero123_ldm": {"prior_3d"}, "sds": set()}) == \
        ["prior_3d", "zero123_ldm", "prior_3d"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_priors_modules_import_no_cycle():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph = {p.stem: priors_imports(p.read_text()) & modules - {p.stem} for p in PACKAGE.glob("*.py")}
    assert {"prior_3d", "zero123_ldm", "zero123_parts"} <= modules
    assert "prior_3d" not in graph["zero123_ldm"]
    assert find_cycle(graph) == []
