"""Occupancy grid: skips empty space during volume rendering (Instant-NGP / nerfacc style).

A ``resolution^3`` grid over [-radius, radius]^3 keeps an exponential moving average of the density
seen in each cell. A cell is occupied while the opacity of one render step through that density,
``1 - exp(-density * step_size)``, exceeds ``min(threshold, mean opacity)``. Samples in unoccupied
cells are never sent to the field.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from stages.render import rng


class OccupancyGrid(nn.Module):
    """Binary occupancy with a density EMA, updated during training.

    Args:
        radius: half side of the cube covered.
        resolution: cells per axis.
        step_size: ray-marching step used to turn density into opacity.
        threshold: opacity above which a cell counts as occupied.

    Example:
        >>> grid = OccupancyGrid(radius=1.0, resolution=8, step_size=0.02)
        >>> grid.update(lambda x: (x.norm(dim=-1) < 0.5).float() * 100)
        >>> grid.query(torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.9, 0.9]])).tolist()
        [True, False]
    """

    def __init__(self, radius: float = 1.0, resolution: int = 64, step_size: float = 0.01,
                 threshold: float = 0.01):
        super().__init__()
        self.radius, self.resolution, self.step_size, self.threshold = radius, resolution, step_size, threshold
        self.register_buffer("density", torch.zeros(resolution**3))
        self.register_buffer("occupied", torch.ones(resolution**3, dtype=torch.bool))

    def cell_index(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Flat cell index [...] of each point [..., 3] and whether the point is inside the grid."""
        unit = (points / self.radius + 1) / 2
        inside = ((unit >= 0) & (unit < 1)).all(-1)
        cell = (unit * self.resolution).long().clamp(0, self.resolution - 1)
        r = self.resolution
        return (cell[..., 0] * r + cell[..., 1]) * r + cell[..., 2], inside

    def query(self, points: Tensor) -> Tensor:
        """[...] bool: whether each point [..., 3] lies in an occupied cell."""
        idx, inside = self.cell_index(points)
        return self.occupied[idx] & inside

    def cell_centres(self) -> Tensor:
        """[resolution^3, 3] cell centres in world space, in flat-index order."""
        r = self.resolution
        ax = (torch.arange(r, device=self.density.device, dtype=torch.float32) + 0.5) / r * 2 - 1
        grid = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), dim=-1).reshape(-1, 3)
        return grid * self.radius

    @torch.no_grad()
    def update(self, density_fn, decay: float = 0.95, generator: torch.Generator | None = None,
               chunk: int = 2**18, dilation: int = 1) -> None:
        """Re-evaluate the density at one jittered point per cell and refresh the occupancy.

        Args:
            density_fn: callable [N, 3] -> [N] density.
            decay: EMA decay; the new value is ``max(decay * old, new)``.
            generator: random generator for the jitter.
            chunk: points per density call.
            dilation: occupied cells also mark this many neighbouring cells occupied (a cell whose
                jittered sample missed a thin occupied part is then still rendered).
        """
        cell = 2 * self.radius / self.resolution
        centres = self.cell_centres()
        jitter = (rng.rand(centres.shape, generator, centres.device) - 0.5) * cell
        pts = centres + jitter
        new = torch.cat([density_fn(p).float().reshape(-1) for p in pts.split(chunk)])
        self.density.copy_(torch.maximum(self.density * decay, new))
        opacity = 1 - torch.exp(-self.density * self.step_size)
        occupied = opacity > min(self.threshold, float(opacity.mean()))
        if dilation > 0:
            r, k = self.resolution, 2 * dilation + 1
            grid = occupied.float().reshape(1, 1, r, r, r)
            occupied = nn.functional.max_pool3d(grid, k, stride=1, padding=dilation).reshape(-1) > 0
        self.occupied.copy_(occupied)

    def occupied_fraction(self) -> float:
        """Share of occupied cells."""
        return float(self.occupied.float().mean())
