import pytest
import torch
import trimesh

from stages.render.dmtet import grid_vertices, marching_tets, marching_tets_grid, tet_grid
from stages.render.marching_cubes import field_to_mesh, grid_points, marching_cubes
from stages.render.mesh_sdf import MeshSDF, closest_point_on_triangle

from .helpers import icosphere


def _trimesh(v, f):
    return trimesh.Trimesh(v.detach().numpy(), f.numpy(), process=False)


def test_tet_grid_fills_the_cube_conformingly():
    v, t = tet_grid(3, bound=1.0)
    assert v.shape == (64, 3) and t.shape == (162, 4)
    p = v[t]
    vol = torch.det(torch.stack([p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]], dim=1)).abs() / 6
    torch.testing.assert_close(vol.sum(), torch.tensor(8.0))
    # conforming: every interior triangle is shared by exactly two tets, boundary ones by one
    faces = torch.cat([t[:, [0, 1, 2]], t[:, [0, 1, 3]], t[:, [0, 2, 3]], t[:, [1, 2, 3]]]).sort(dim=1).values
    _, counts = torch.unique(faces, dim=0, return_counts=True)
    assert set(counts.tolist()) == {1, 2}
    assert int((counts == 1).sum()) == 6 * 3 * 3 * 2  # 2 triangles per boundary square


def test_marching_tets_sphere_within_tolerance_and_watertight():
    res = 24
    v, t = tet_grid(res)
    sdf = v.norm(dim=-1) - 0.6
    mv, mf = marching_tets(v, t, sdf)
    mesh = _trimesh(mv, mf)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # outward orientation
    assert (mv.norm(dim=-1) - 0.6).abs().max() < 0.1 * (2 / res)  # linear interpolation error only
    assert abs(mesh.volume / (4 / 3 * torch.pi * 0.6**3) - 1) < 0.02


def test_marching_tets_on_a_box_sdf_is_watertight():
    v, t = tet_grid(16)
    q = v.abs() - torch.tensor([0.5, 0.3, 0.41])
    sdf = q.clamp(min=0).norm(dim=-1) + q.max(-1).values.clamp(max=0)
    mv, mf = marching_tets(v, t, sdf)
    mesh = _trimesh(mv, mf)
    assert mesh.is_watertight and mesh.volume > 0


def test_grid_version_matches_full_tets():
    res = 12
    v, t = tet_grid(res)
    g = torch.Generator().manual_seed(0)
    deform = (torch.rand(v.shape, generator=g) - 0.5) * 0.3 / res
    sdf = (v * torch.tensor([1.0, 1.4, 0.8])).norm(dim=-1) - 0.55
    a_v, a_f = marching_tets(v + deform, t, sdf)
    b_v, b_f = marching_tets_grid(v + deform, sdf, res)
    key = lambda vv, ff: sorted(tuple(sorted(map(tuple, vv[ff].round(decimals=5).tolist()))) for ff in ff)  # noqa: E731
    assert key(a_v, a_f) == key(b_v, b_f)


def test_marching_tets_gradients_match_finite_differences():
    res = 4
    v, t = tet_grid(res)
    sdf0 = (v.double().norm(dim=-1) - 0.55)
    weights = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def loss(sdf, verts):
        mv, _ = marching_tets(verts, t, sdf)
        return (mv * weights[: mv.shape[0]]).sum()

    sdf = sdf0.clone().requires_grad_()
    verts = v.double().requires_grad_()
    gs, gv = torch.autograd.grad(loss(sdf, verts), (sdf, verts))
    assert gs.abs().sum() > 0 and gv.abs().sum() > 0
    eps = 1e-6
    for i in gs.abs().topk(3).indices.tolist():
        d = torch.zeros_like(sdf0)
        d[i] = eps
        fd = (loss(sdf0 + d, v.double()) - loss(sdf0 - d, v.double())) / (2 * eps)
        torch.testing.assert_close(gs[i], fd, atol=1e-6, rtol=1e-5)
    i = int(gv.abs().sum(-1).argmax())
    d = torch.zeros_like(verts)
    d[i, 0] = eps
    fd = (loss(sdf0, v.double() + d) - loss(sdf0, v.double() - d)) / (2 * eps)
    torch.testing.assert_close(gv[i, 0], fd, atol=1e-6, rtol=1e-5)


def test_mesh_sdf_on_sphere_and_box():
    verts, faces = icosphere(4, 0.5)
    sdf = MeshSDF(verts, faces, n_samples=20000)
    p = torch.rand(3000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close(sdf(p), p.norm(dim=-1) - 0.5, atol=1e-3, rtol=0)  # facet sagitta
    box = trimesh.creation.box(extents=(1.0, 0.6, 0.8))
    sdf = MeshSDF(torch.tensor(box.vertices).float(), torch.tensor(box.faces), n_samples=5000)
    q = p.abs() - torch.tensor([0.5, 0.3, 0.4])
    exact = q.clamp(min=0).norm(dim=-1) + q.max(-1).values.clamp(max=0)
    torch.testing.assert_close(sdf(p), exact, atol=1e-4, rtol=0)  # float32


def test_closest_point_regions():
    a, b, c = torch.zeros(1, 3), torch.tensor([[1.0, 0, 0]]), torch.tensor([[0.0, 1, 0]])
    cases = {(-1.0, -1.0, 0.5): [1, 0, 0], (2.0, -0.5, 0.0): [0, 1, 0], (0.5, -1.0, 1.0): [0.5, 0.5, 0],
             (0.2, 0.3, -1.0): [0.5, 0.2, 0.3], (-1.0, 0.5, 0.0): [0.5, 0, 0.5]}
    for p, expected in cases.items():
        got = closest_point_on_triangle(torch.tensor([p]), a, b, c)
        torch.testing.assert_close(got, torch.tensor([expected], dtype=torch.float32), atol=1e-6, rtol=0)


def test_dmtet_initialised_from_mesh_recovers_it():
    """SDF from a mesh on the tet grid -> marching tets gives back the mesh's surface."""
    verts, faces = icosphere(3, 0.5)
    res = 20
    v = grid_vertices(res)
    mv, mf = marching_tets_grid(v, MeshSDF(verts, faces, n_samples=20000)(v), res)
    assert _trimesh(mv, mf).is_watertight
    assert (mv.norm(dim=-1) - 0.5).abs().max() < 0.02


@pytest.mark.parametrize("inside", ["above", "below"])
def test_marching_cubes_orientation_and_accuracy(inside):
    fn = (lambda p: 1 - p.norm(dim=-1) / 0.6) if inside == "above" else (lambda p: p.norm(dim=-1) - 0.6)
    v, f = field_to_mesh(fn, 48, 0.0, inside=inside)
    mesh = _trimesh(v, f)
    assert mesh.is_watertight and mesh.volume > 0
    assert (v.norm(dim=-1) - 0.6).abs().max() < 2e-3


def test_marching_cubes_empty_field():
    v, f = marching_cubes(torch.zeros(8, 8, 8), 0.5)
    assert v.shape == (0, 3) and f.shape == (0, 3)
    assert grid_points(4).shape == (64, 3)
