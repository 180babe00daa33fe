"""Ground-truth renders: analytic depth / normal of a sphere, framing as preprocess, reference Inputs."""
import numpy as np
import pytest
import torch
import trimesh

from evaluation.framing import frame_subject, mask_box
from evaluation.meshes import SubjectMesh, from_trimesh
from evaluation.truth import reference_inputs, render_truth
from stages.inputs import Inputs
from stages.render.cameras import orbit_cameras, reference_camera
from stages.render.volume import ray_sphere


def _sphere(colour=(0.2, 0.4, 0.6)):
    s = trimesh.creation.icosphere(subdivisions=5, radius=1.0)
    return SubjectMesh(s.vertices, s.faces.astype(np.int64), colors=np.tile(np.float32(colour), (len(s.vertices), 1)))


def test_unit_sphere_has_the_analytic_depth_and_normal():
    cam = orbit_cameras(0.0, 0.0, 3.0, 60.0)  # on +x at distance 3, looking at the origin, wide enough
    r = render_truth(_sphere(), cam, 65, 65)
    c = 32  # the centre pixel's ray is the optical axis
    torch.testing.assert_close(r["depth"][0, c, c, 0], torch.tensor(2.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(r["normal"][0, c, c], torch.tensor([0.0, 0.0, 1.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(r["rgb"][0, c, c], torch.tensor([0.2, 0.4, 0.6]), atol=1e-5, rtol=0)
    assert r["mask"][0, 0, 0, 0] == 0 and (r["rgb"][0, 0, 0] == 1).all()  # white background
    # every interior pixel: depth along the ray, normal of the hit point in camera axes
    o, d = cam.rays(65, 65)
    near, _, hit = ray_sphere(o.reshape(-1, 3), d.reshape(-1, 3), 1.0)
    world_n = o.reshape(-1, 3) + d.reshape(-1, 3) * near[:, None]
    cam_n = world_n @ cam.c2w[0, :3, :3]  # x right, y up, z towards the camera
    facing = -(world_n * d.reshape(-1, 3)).sum(-1)  # cosine of incidence; grazing pixels see the facets
    inner = (r["mask"][0, ..., 0] == 1).reshape(-1) & hit & (facing > 0.3)
    assert inner.sum() > 1000
    torch.testing.assert_close(r["depth"].reshape(-1)[inner], near[inner], atol=2e-3, rtol=0)
    torch.testing.assert_close(r["normal"].reshape(-1, 3)[inner], cam_n[inner], atol=5e-3, rtol=0)
    # the top of the sphere is up in the image and has y > 0; the person's left (+y) is on the right
    assert r["normal"][0, c - 15, c, 1] > 0.5 and r["normal"][0, c, c + 15, 0] > 0.5


@pytest.mark.parametrize("name", ["held_object", "half_body"])
def test_framing_matches_preprocess(subjects, name):
    canvas = 128
    mesh = from_trimesh(subjects[name])
    framing = frame_subject(mesh, canvas=canvas)
    mask = render_truth(mesh, reference_camera(), canvas, canvas, framing)["mask"][0, ..., 0].numpy()
    y0, y1, x0, x1 = mask_box(mask)
    assert abs(max(y1 - y0, x1 - x0) - 0.9 * canvas) <= 1
    assert abs((y0 + y1) / 2 - canvas / 2) <= 1 and abs((x0 + x1) / 2 - canvas / 2) <= 1
    x = np.random.default_rng(0).normal(size=(100, 3))
    np.testing.assert_allclose(framing.to_subject(framing.to_scene(x)), x, atol=1e-12)


def test_framing_of_a_wide_subject_fits_its_width():
    box = trimesh.creation.box(extents=(3.0, 1.0, 1.0))  # glTF x: across the image
    box.visual.vertex_colors = [90, 120, 150, 255]
    framing = frame_subject(from_trimesh(box), canvas=96)
    y0, y1, x0, x1 = mask_box(render_truth(box, reference_camera(), 96, 96, framing)["mask"][0, ..., 0].numpy())
    assert abs((x1 - x0) - 0.9 * 96) <= 1 and (y1 - y0) < 0.5 * 96


def test_reference_inputs_look_like_preprocess(subjects):
    mesh = from_trimesh(subjects["front_back"])
    framing = frame_subject(mesh, canvas=64)
    inputs = reference_inputs(mesh, framing, 64, prompt="a person")
    assert isinstance(inputs, Inputs) and inputs.prompt == "a person"
    inside = inputs.mask > 0.5
    assert inputs.depth[inside].max() == 1 and inputs.depth[inside].min() == 0 and (inputs.depth[~inside] == 0).all()
    torch.testing.assert_close(inputs.normal[inside].norm(dim=-1), torch.ones(int(inside.sum())))
    assert (inputs.normal[inside][:, 2] > -0.2).float().mean() > 0.95  # seen surfaces face the camera
    assert (inputs.rgb[inputs.mask == 0] == 1).all()
    front = inputs.rgb[inputs.mask == 1]
    assert (front[:, 0] > 0.8).float().mean() > 0.3  # the red / yellow front, not the blue / green back
