"""Subjects built once per test session (each takes about a second)."""
import pytest

from evaluation.subjects import SUBJECTS, make_subject


@pytest.fixture(scope="session")
def subjects():
    """Every built-in subject by name (Trimesh; treat as read-only)."""
    return {name: make_subject(name) for name in SUBJECTS}
