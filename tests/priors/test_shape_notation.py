"""One shape notation in the docstrings and comments of priors/ and stages/render/: ``[B, 3, H, W]``
(square brackets, a space after each comma), not ``(B, 3, H, W)`` nor ``[B,3,H,W]``."""
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_DIM = r"(?:\.\.\.|\d*[A-Z](?:\^\d)?|\d+|[a-z_]+)"
OLD_STYLE = re.compile(rf"\({_DIM}(?:, ?{_DIM})+\)|\({_DIM},\)|\[{_DIM}(?:, ?{_DIM})*,(?! ){_DIM}")
"""A parenthesised shape with a one-letter axis, or a bracketed shape with no space after a comma."""
_AXIS = re.compile(r"(?<![A-Za-z_])\d*[A-Z](?![A-Za-z_])")


def old_shapes(text: str) -> list[str]:
    """Shapes in the old notations in ``text``, doctest lines (``>>>`` and their output) left out."""
    found, example = [], False
    for line in text.splitlines():
        s = line.strip()
        example = s.startswith((">>>", "... ")) or (example and bool(s))
        if not example:
            found += [m.group(0) for m in OLD_STYLE.finditer(line)
                      if m.group(0).startswith("[") or _AXIS.search(m.group(0))]
    return found


def prose(path: Path) -> list[str]:
    """Text of the string literals and comments of a source file."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return [t.string for t in tokens if t.type in (tokenize.STRING, tokenize.COMMENT)]


@pytest.mark.parametrize("text, bad", [
    ('"""rays (R, 3) through a sphere"""', ["(R, 3)"]), ("# (N,)", ["(N,)"]),
    ('"""encode [B,3,H,W] images"""', ["[B,3,H,W"]), ('"""mask (H, W, 1)"""', ["(H, W, 1)"]),
    ('"""[B, 3, H, W] images in [0, 1], faces [F, 3], (a, b, c), (0, 1)"""', []),
    ('""">>> torch.rand(5, 3).shape\n(5, 3)"""', []),
])
def test_old_shapes_are_found(text, bad):
    assert old_shapes(text) == bad


def test_docstrings_use_one_shape_notation():
    files = sorted((ROOT / "priors").glob("*.py")) + sorted((ROOT / "stages" / "render").glob("*.py"))
    assert len(files) > 25
    offenders = [f"{p.relative_to(ROOT)}: {s}" for p in files for text in prose(p) for s in old_shapes(text)]
    assert offenders == []
