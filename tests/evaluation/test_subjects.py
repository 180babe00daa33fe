"""Code-made subjects: deterministic, closed, sized like people, coloured differently front and back."""
import numpy as np
import pytest
import torch

from evaluation.framing import Framing
from evaluation.meshes import from_trimesh
from evaluation.subjects import SUBJECTS, make_subject
from evaluation.truth import render_truth
from stages.render.cameras import orbit_cameras

REQUIRED = {"skirt", "held_object", "half_body", "thin_limbs", "front_back"}


def test_required_subjects_exist_and_unknown_names_fail():
    assert REQUIRED <= set(SUBJECTS)
    with pytest.raises(ValueError, match="unknown subject 'nope'; known: skirt"):
        make_subject("nope")


@pytest.mark.parametrize("name", ["half_body", "front_back"])
def test_same_bytes_twice(subjects, name):
    again = make_subject(name)
    for attr in ("vertices", "faces"):
        assert getattr(again, attr).tobytes() == getattr(subjects[name], attr).tobytes()
    assert again.visual.vertex_colors.tobytes() == subjects[name].visual.vertex_colors.tobytes()


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_closed_outward_sized_and_never_white(subjects, name):
    mesh = subjects[name]
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    assert len(mesh.split(only_watertight=False)) == 1
    assert len(mesh.faces) < 60_000
    height = mesh.extents[1]
    assert (0.6 < height < 1.0) if name == "half_body" else (1.6 < height < 1.8)
    assert abs(mesh.vertices[:, 0].mean()) < 0.1 and mesh.extents[2] < 0.6  # centred on Y, facing Z
    assert mesh.visual.vertex_colors[:, :3].max() <= 0.95 * 255 + 0.5


def _mean_colour_front_back(mesh):
    framing = Framing(0.5, np.array([0.0, 0.0, -0.45]))  # about 0.85 scene units tall
    cams = orbit_cameras(torch.zeros(2), torch.tensor([0.0, 180.0]), torch.full((2,), 3.0), torch.full((2,), 20.0))
    r = render_truth(from_trimesh(mesh), cams, 96, 96, framing)
    inside = r["mask"][..., 0] > 0.99
    return [r["rgb"][i][inside[i]].mean(0) for i in range(2)]


@pytest.mark.parametrize("name,least", [("front_back", 0.5), ("skirt", 0.1), ("held_object", 0.1),
                                        ("half_body", 0.1), ("thin_limbs", 0.05)])
def test_front_and_back_colours_differ(subjects, name, least):
    front, back = _mean_colour_front_back(subjects[name])
    assert (front - back).norm() > least, (front, back)
