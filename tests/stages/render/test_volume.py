import torch

from stages.render.cameras import orbit_cameras
from stages.render.fields import DensityField
from stages.render.occupancy import OccupancyGrid
from stages.render.volume import (
    DirectionBackground,
    composite,
    compositing_weights,
    ray_sphere,
    render_image,
    render_rays,
    stratified_samples,
)

from .helpers import sphere_hits


class SolidSphere:
    """Density 1e4 inside a sphere of radius 0.5 (smoothed over 1e-4 so gradients exist), red albedo."""

    def density(self, x):
        return 1e4 * torch.sigmoid((0.5 - x.norm(dim=-1)) / 1e-4)

    def __call__(self, x):
        return self.density(x), torch.tensor([1.0, 0.0, 0.0]).expand(x.shape[0], 3)


def _camera():
    return orbit_cameras(torch.tensor([15.0]), torch.tensor([-40.0]), torch.tensor([2.5]), torch.tensor([40.0]))


def test_ray_sphere_and_samples():
    o = torch.tensor([[0.0, 0, 3], [0, 5, 3]])
    d = torch.tensor([[0.0, 0, -1], [0, 0, -1]])
    near, far, hit = ray_sphere(o, d, 1.0)
    assert hit.tolist() == [True, False]
    torch.testing.assert_close(near[0], torch.tensor(2.0))
    t0, t1 = stratified_samples(near[:1], far[:1], 4, perturb=False)
    torch.testing.assert_close(t0, torch.tensor([[2.0, 2.5, 3.0, 3.5]]))
    t0, t1 = stratified_samples(near[:1], far[:1], 4, perturb=True, generator=torch.Generator().manual_seed(0))
    assert (t1 > t0).all() and t0[0, 0] >= 2.0 and t1[0, -1] <= 4.0


def test_sphere_renders_exact_mask_depth_normal():
    cam = _camera()
    out = render_image(SolidSphere(), cam, 48, 48, radius=1.0, n_samples=1024, normals="analytic",
                       background=torch.ones(3))
    o, d = cam.rays(48, 48)
    hit, t, normal, disc = sphere_hits(o, d, 0.5)
    opacity = out["opacity"][..., 0]
    inner, outer = disc > 0.02, disc < -0.02
    assert (opacity[inner] > 0.999).all() and (opacity[outer] < 1e-3).all()
    torch.testing.assert_close(out["depth"][..., 0][inner], t[inner], atol=4e-3, rtol=0)  # 2 / 1024 bins
    torch.testing.assert_close(out["normal"][inner], normal[inner], atol=2e-2, rtol=0)
    torch.testing.assert_close(out["rgb"][inner], torch.tensor([1.0, 0, 0]).expand(int(inner.sum()), 3), atol=1e-3,
                               rtol=0)
    torch.testing.assert_close(out["rgb"][outer], torch.ones(int(outer.sum()), 3), atol=1e-3, rtol=0)


def test_compositing_gradcheck():
    g = torch.Generator().manual_seed(0)
    density = (torch.rand(3, 6, generator=g, dtype=torch.float64) * 3).requires_grad_()
    color = torch.rand(3, 6, 2, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.cumsum(torch.rand(3, 7, generator=g, dtype=torch.float64) * 0.3 + 0.05, dim=1)

    def f(density, color):
        w = compositing_weights(density, t[:, :-1], t[:, 1:])
        return composite(w, color), w.sum(1)

    assert torch.autograd.gradcheck(f, (density, color))


def test_compositing_weights_match_closed_form():
    density = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.0, 0.5, 1.0, 2.0]])
    w = compositing_weights(density, t[:, :-1], t[:, 1:])
    a = 1 - torch.exp(-torch.tensor([0.5, 1.0, 0.5]))
    expected = torch.stack([a[0], (1 - a[0]) * a[1], (1 - a[0]) * (1 - a[1]) * a[2]])
    torch.testing.assert_close(w[0], expected)


def test_occupancy_skipping_keeps_the_image_and_skips_samples():
    field = DensityField(n_levels=4, log2_hashmap_size=12, blob_scale=50.0, blob_std=0.4)
    grid = OccupancyGrid(radius=1.0, resolution=32, step_size=2 / 64, threshold=0.01)
    calls = []

    class Counting(torch.nn.Module):
        def density(self, x):
            return field.density(x)

        def forward(self, x):
            calls.append(x.shape[0])
            return field(x)

    counted = Counting()
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):  # as in training: repeated jittered updates find thin occupied parts of cells
        grid.update(field.density, generator=gen)
    assert 0.01 < grid.occupied_fraction() < 0.5
    cam = _camera()
    with torch.no_grad():
        full = render_image(counted, cam, 32, 32, n_samples=64)
        n_full = sum(calls)
        calls.clear()
        skipped = render_image(counted, cam, 32, 32, n_samples=64, occupancy=grid)
    assert sum(calls) < 0.5 * n_full
    torch.testing.assert_close(skipped["rgb"], full["rgb"], atol=1e-2, rtol=0)
    torch.testing.assert_close(skipped["opacity"], full["opacity"], atol=1e-2, rtol=0)


def test_occupancy_update_tracks_training():
    grid = OccupancyGrid(radius=1.0, resolution=16, step_size=0.05)
    grid.update(lambda x: torch.where(x[:, 0] > 0, 100.0, 0.0))
    assert grid.query(torch.tensor([[0.5, 0, 0]])).item() and not grid.query(torch.tensor([[-0.5, 0, 0]])).item()
    for _ in range(100):  # the field moves: the EMA forgets the old density
        grid.update(lambda x: torch.where(x[:, 0] < 0, 100.0, 0.0), decay=0.9)
    assert grid.query(torch.tensor([[-0.5, 0, 0]])).item() and not grid.query(torch.tensor([[0.5, 0, 0]])).item()
    assert not grid.query(torch.tensor([[2.0, 0, 0]])).item()


def test_background_model_and_gradients_to_field():
    field = DensityField(n_levels=4, log2_hashmap_size=12)
    bg = DirectionBackground()
    o, d = _camera().rays(8, 8)
    out = render_rays(field, o.reshape(-1, 3), d.reshape(-1, 3), n_samples=16, background=bg,
                      normals="finite_difference", perturb=True, generator=torch.Generator().manual_seed(0))
    (out["rgb"].sum() + out["normal"].sum()).backward()
    assert field.encoding.table.grad.abs().sum() > 0
    assert all(p.grad is not None for p in bg.parameters())
    miss = render_rays(field, torch.tensor([[0.0, 5, 3]]), torch.tensor([[0.0, 0, -1]]), background=bg)
    torch.testing.assert_close(miss["rgb"], bg(torch.tensor([[0.0, 0, -1]])))
