"""Package rules: every module has passing doctests and a test file that imports it, and stages/render
imports neither pipeline, priors nor other stages."""
import ast
import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import stages.render

MODULES = sorted(m.name for m in pkgutil.iter_modules(stages.render.__path__))
TESTS = Path(__file__).parent
NO_DOCTESTS: dict[str, str] = {}
"""Modules allowed to hold no docstring examples, each with the reason (none at present)."""


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(f"stages.render.{name}")
    result = doctest.testmod(module)
    assert result.failed == 0
    if name in NO_DOCTESTS:
        assert result.attempted == 0, f"{name} has examples now: drop it from NO_DOCTESTS"
    else:
        assert result.attempted > 0, f"stages.render.{name} has no docstring examples"


def render_modules_imported(source: str) -> set[str]:
    """Names of the stages.render modules that a Python source imports (``from stages.render.x import
    ...``, ``from stages.render import x``, ``import stages.render.x``)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "stages.render":
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages.render."):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("stages.render."))
    return found & set(MODULES)


def test_every_module_is_imported_by_a_test_file():
    """Each module is imported by a test file here (other than this one) that defines tests."""
    covered = set()
    for path in TESTS.glob("test_*.py"):
        source = path.read_text()
        if path.name != Path(__file__).name and "\ndef test_" in source:
            covered |= render_modules_imported(source)
    assert len(MODULES) >= 14, MODULES
    assert set(MODULES) - covered == set(), "stages.render modules no test file imports"


@pytest.mark.parametrize("name", MODULES)
def test_import_boundary(name):
    tree = ast.parse(Path(stages.render.__path__[0], f"{name}.py").read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for n in names:
            assert not n.startswith(("pipeline", "priors")), (name, n)
            assert not n.startswith("stages.") or n.startswith("stages.render"), (name, n)


def test_render_modules_imported_reads_every_import_form():
    source = ("from stages.render.cameras import orbit_cameras\nfrom stages.render import uv as U, export\n"
              "import stages.render.volume\nfrom stages.render.nothing import x\nimport stages\n")
    assert render_modules_imported(source) == {"cameras", "uv", "export", "volume"}
