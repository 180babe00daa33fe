import math

import pytest
import torch

from stages.render.fields import MLP, DensityField, density_normals
from stages.render.hashgrid import HashGrid, active_levels, level_layout


def _tcnn_style_reference(grid: HashGrid, x: torch.Tensor) -> torch.Tensor:
    """Per-point, per-corner encoding written from tiny-cuda-nn's formulas with Python integers."""
    scales, res, sizes = level_layout(grid.n_levels, grid.log2_hashmap_size, grid.base_resolution,
                                      grid.per_level_scale)
    table = grid.table.detach().double()
    out = torch.zeros(x.shape[0], grid.out_dim, dtype=torch.float64)
    offset = 0
    for level in range(grid.n_levels):
        for n, p in enumerate(x.tolist()):
            pos = [c * scales[level] + 0.5 for c in p]
            cell = [math.floor(c) for c in pos]
            frac = [c - f for c, f in zip(pos, cell)]
            for corner in range(8):
                bits = [(corner >> a) & 1 for a in range(3)]
                g = [cell[a] + bits[a] for a in range(3)]
                if res[level] ** 3 <= sizes[level]:
                    idx = g[0] + g[1] * res[level] + g[2] * res[level] ** 2
                else:
                    idx = (g[0] * 1 ^ g[1] * 2654435761 ^ g[2] * 805459861) & 0xFFFFFFFF
                idx %= sizes[level]
                w = math.prod(frac[a] if bits[a] else 1 - frac[a] for a in range(3))
                f0 = level * grid.features_per_level
                out[n, f0:f0 + grid.features_per_level] += w * table[offset + idx]
        offset += sizes[level]
    return out


def test_layout_matches_release_resolutions():
    scales, res, sizes = level_layout(16, 19, 16, 1.447269237440378)
    assert res[0] == 16 and res[-1] == 4096  # scale 16 * 1.4473**15 - 1 = 4095 (+ rounding) -> ceil + 1
    assert sizes[0] == 4096 and max(sizes) == 2**19
    assert all(s % 8 == 0 for s in sizes)


def test_encoding_matches_integer_reference():
    grid = HashGrid(n_levels=6, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0)
    torch.nn.init.uniform_(grid.table, -1, 1)
    x = torch.rand(20, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(grid(x).double(), _tcnn_style_reference(grid, x), atol=1e-5, rtol=1e-5)


def test_fast_gather_matches_autograd_reference():
    grid = HashGrid(n_levels=8, log2_hashmap_size=12)
    torch.nn.init.uniform_(grid.table, -1, 1)
    x = torch.rand(3000, 3, generator=torch.Generator().manual_seed(1))
    g_out = torch.randn(3000, grid.out_dim, generator=torch.Generator().manual_seed(2))
    fast = grid(x)
    grad_fast, = torch.autograd.grad((fast * g_out).sum(), grid.table)
    ref = grid.forward_reference(x)
    grad_ref, = torch.autograd.grad((ref * g_out).sum(), grid.table)
    torch.testing.assert_close(fast, ref)
    torch.testing.assert_close(grad_fast, grad_ref)


def test_input_gradient_and_double_backward():
    grid = HashGrid(n_levels=4, log2_hashmap_size=10, base_resolution=4)
    torch.nn.init.uniform_(grid.table, -1, 1)
    x = torch.rand(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.8 + 0.1
    assert torch.autograd.gradcheck(lambda p: grid(p).double(), (x.requires_grad_(),), eps=1e-4, atol=1e-3)
    xg = x.detach().float().requires_grad_()
    gx, = torch.autograd.grad(grid(xg).square().sum(), xg, create_graph=True)
    gt, = torch.autograd.grad(gx.sum(), grid.table)
    assert gt.abs().sum() > 0


def test_progressive_band():
    assert [active_levels(s, 16, 8, 2000, 500) for s in (0, 2000, 2500, 3000, 100000)] == [8, 8, 9, 10, 16]
    grid = HashGrid(n_levels=4, log2_hashmap_size=10, start_level=2, start_step=10, update_steps=5)
    torch.nn.init.uniform_(grid.table, -1, 1)
    x = torch.rand(7, 3)
    out = grid(x, grid.levels_at(0))
    assert (out[:, 4:] == 0).all() and (out[:, :4] != 0).all()
    torch.testing.assert_close(grid(x, grid.levels_at(15)), torch.cat([grid(x)[:, :6], torch.zeros(7, 2)], 1))


def test_density_field_blob_and_heads():
    field = DensityField(n_levels=4, log2_hashmap_size=10, blob_scale=10.0, blob_std=0.5)
    x = torch.tensor([[0.0, 0, 0], [0.9, 0, 0]])
    density, albedo = field(x)
    assert density[0] > 5 and density[1] < 1e-3
    assert albedo.shape == (2, 3) and ((albedo > 0) & (albedo < 1)).all()
    assert MLP(8, 4, 16, 2)(torch.zeros(3, 8)).shape == (3, 4)


def test_normals_analytic_and_finite_difference_agree():
    def density(p):
        return torch.exp(-((p - 0.1) ** 2).sum(-1) / 0.3)

    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(4)) * 0.5
    expected = torch.nn.functional.normalize(x - 0.1, dim=-1)  # density falls outward
    torch.testing.assert_close(density_normals(density, x, "analytic"), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(density_normals(density, x, "finite_difference", 1e-3), expected, atol=1e-3, rtol=0)
    with pytest.raises(ValueError):
        density_normals(density, x, "sobel")


@pytest.mark.requires_cuda
def test_tcnn_fast_path_matches_torch():
    pytest.importorskip("tinycudann")
    grid = HashGrid(n_levels=16, log2_hashmap_size=19).cuda()
    torch.nn.init.uniform_(grid.table, -1e-2, 1e-2)
    x = torch.rand(4096, 3, device="cuda")
    grid.backend = "tcnn"
    out_tcnn = grid(x)
    g_tcnn, = torch.autograd.grad(out_tcnn.square().sum(), grid.table)
    grid.backend = "torch"
    out = grid(x)
    g, = torch.autograd.grad(out.square().sum(), grid.table)
    torch.testing.assert_close(out_tcnn, out, atol=1e-3, rtol=1e-2)
    torch.testing.assert_close(g_tcnn, g, atol=1e-3, rtol=1e-2)


def test_density_activations():
    from stages.render.fields import density_activation
    raw = torch.tensor([-2.0, 0.0, 30.0], requires_grad=True)
    torch.testing.assert_close(density_activation(raw, "softplus"), torch.nn.functional.softplus(raw))
    out = density_activation(raw, "exp")
    torch.testing.assert_close(out, torch.exp(raw))
    out.sum().backward()
    assert raw.grad[2] == torch.exp(torch.tensor(15.0))  # gradient clamped like Instant-NGP's trunc_exp
    with pytest.raises(ValueError):
        density_activation(raw, "relu")
