"""Package rules: doctests pass, and stages/render imports neither pipeline, priors nor other stages."""
import ast
import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import stages.render

MODULES = sorted(m.name for m in pkgutil.iter_modules(stages.render.__path__))


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(f"stages.render.{name}")
    result = doctest.testmod(module)
    assert result.failed == 0


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


def test_every_module_has_tests_or_doctests():
    assert {"cameras", "rasterize", "interpolate", "antialias", "hashgrid", "volume", "occupancy", "dmtet",
            "marching_cubes", "uv", "export", "mesh_sdf", "fields", "mesh_render"} <= set(MODULES)
