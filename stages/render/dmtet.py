"""DMTet (Shen et al. 2021): a tetrahedral grid built here (no downloaded tet files) and
differentiable marching tetrahedra.

The grid splits each of ``R^3`` cubes of [-bound, bound]^3 into 6 tetrahedra around the cube's main
diagonal (Kuhn / Freudenthal split), which tiles space conformingly: neighbouring cubes agree on
their shared faces, so the extracted surface is watertight. Sign convention: ``sdf < 0`` inside.
Output triangles are oriented counter-clockwise seen from outside.
"""
from __future__ import annotations

import torch
from torch import Tensor

# Kaolin's marching-tets tables: edges of a tet as corner pairs, and for each of the 16
# inside/outside codes (bit i = corner i positive) up to two triangles as indices into the edges.
BASE_TET_EDGES = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])
TRIANGLE_TABLE = torch.tensor([
    [-1, -1, -1, -1, -1, -1], [1, 0, 2, -1, -1, -1], [4, 0, 3, -1, -1, -1], [1, 4, 2, 1, 3, 4],
    [3, 1, 5, -1, -1, -1], [2, 3, 0, 2, 5, 3], [1, 4, 0, 1, 5, 4], [4, 2, 5, -1, -1, -1],
    [4, 5, 2, -1, -1, -1], [4, 1, 0, 4, 5, 1], [3, 2, 0, 3, 5, 2], [1, 3, 5, -1, -1, -1],
    [4, 1, 2, 4, 3, 1], [3, 0, 4, -1, -1, -1], [2, 0, 1, -1, -1, -1], [-1, -1, -1, -1, -1, -1]])
NUM_TRIANGLES = torch.tensor([0, 1, 1, 2, 1, 2, 2, 1, 1, 2, 2, 1, 2, 1, 1, 0])

# The 6 tets of a unit cube (corner c = x + 2y + 4z), all sharing the diagonal 0 -> 7.
_CUBE_TETS = torch.tensor([[0, 1, 3, 7], [0, 3, 2, 7], [0, 2, 6, 7], [0, 6, 4, 7], [0, 4, 5, 7], [0, 5, 1, 7]])


def grid_vertices(resolution: int, bound: float = 1.0) -> Tensor:
    """((R + 1)^3, 3) lattice points of [-bound, bound]^3, index ``(i * (R + 1) + j) * (R + 1) + k``."""
    ax = torch.linspace(-bound, bound, resolution + 1)
    return torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), dim=-1).reshape(-1, 3)


def cube_tets(cubes: Tensor, resolution: int) -> Tensor:
    """Tetrahedra [6 C, 4] of cubes given by their lowest-corner lattice coordinates [C, 3]."""
    n = resolution + 1
    bits = torch.tensor([[c & 1, c >> 1 & 1, c >> 2 & 1] for c in range(8)], device=cubes.device)
    corners = cubes[:, None, :] + bits  # [C, 8, 3]
    vid = (corners[..., 0] * n + corners[..., 1]) * n + corners[..., 2]
    return vid[:, _CUBE_TETS.to(cubes.device)].reshape(-1, 4)


def tet_grid(resolution: int, bound: float = 1.0) -> tuple[Tensor, Tensor]:
    """A conforming tetrahedral grid of [-bound, bound]^3 with ``resolution`` cubes per axis.

    Returns:
        vertices [(R + 1)^3, 3] and tetrahedra [6 R^3, 4] int64.

    Example:
        >>> v, t = tet_grid(2)
        >>> v.shape, t.shape
        (torch.Size([27, 3]), torch.Size([48, 4]))
    """
    r = torch.arange(resolution)
    cubes = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)
    return grid_vertices(resolution, bound), cube_tets(cubes, resolution)


def marching_tets(verts: Tensor, tets: Tensor, sdf: Tensor) -> tuple[Tensor, Tensor]:
    """Extract the zero level set of ``sdf`` over a tet mesh; differentiable in ``verts`` and ``sdf``.

    Args:
        verts: [V, 3] (deformed) tet-grid vertices.
        tets: [T, 4] vertex indices.
        sdf: [V] signed distance, negative inside.

    Returns:
        mesh vertices [M, 3], one per crossed grid edge, and faces [K, 3] int64.
    """
    assert verts.shape[0] == sdf.shape[0] and tets.shape[-1] == 4, (verts.shape, sdf.shape, tets.shape)
    dev = verts.device
    with torch.no_grad():
        pos = sdf > 0
        occ = pos[tets]
        count = occ.sum(-1)
        crossed = (count > 0) & (count < 4)
        tets_c, occ_c = tets[crossed], occ[crossed]
        edges = tets_c[:, BASE_TET_EDGES.to(dev)].reshape(-1, 2).sort(dim=1).values
        key = edges[:, 0] * verts.shape[0] + edges[:, 1]
        uniq, inverse = torch.unique(key, return_inverse=True)
        ends = torch.stack([uniq // verts.shape[0], uniq % verts.shape[0]], dim=1)
        cut = pos[ends[:, 0]] != pos[ends[:, 1]]
        new_id = torch.full((uniq.shape[0],), -1, dtype=torch.long, device=dev)
        new_id[cut] = torch.arange(int(cut.sum()), device=dev)
        edge_vert = new_id[inverse].reshape(-1, 6)
        code = (occ_c.long() * (2 ** torch.arange(4, device=dev))).sum(-1)
        faces = _table_faces(edge_vert, code)
        a, b = ends[cut, 0], ends[cut, 1]
    sa, sb = sdf[a], sdf[b]
    w = sa / (sa - sb)  # zero crossing along a -> b, differentiable in the sdf
    mesh_verts = verts[a] + w[:, None] * (verts[b] - verts[a])
    faces = _orient_outward(mesh_verts.detach(), faces, verts.detach(), a, b, pos)
    return mesh_verts, faces


def _table_faces(edge_vert: Tensor, code: Tensor) -> Tensor:
    """Triangles [K, 3] from per-tet mesh-vertex ids of the 6 edges [T, 6] and case codes [T]."""
    table = TRIANGLE_TABLE.to(code.device)[code]
    n = NUM_TRIANGLES.to(code.device)[code]
    one = torch.gather(edge_vert[n == 1], 1, table[n == 1][:, :3])
    two = torch.gather(edge_vert[n == 2], 1, table[n == 2][:, :6]).reshape(-1, 3)
    return torch.cat([one, two], dim=0)


def _orient_outward(mesh_verts: Tensor, faces: Tensor, verts: Tensor, a: Tensor, b: Tensor, pos: Tensor) -> Tensor:
    """Flip triangles whose normal points from the outside (sdf > 0) end of their first vertex's grid
    edge towards the inside end; independent of tetrahedron orientation."""
    v = mesh_verts[faces]
    normal = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
    e = faces[:, 0]
    outward = verts[b[e]] - verts[a[e]]
    outward = torch.where(pos[a[e]][:, None], -outward, outward)  # direction from inside to outside
    flip = (normal * outward).sum(-1) < 0
    return torch.where(flip[:, None], faces[:, [0, 2, 1]], faces)


def marching_tets_grid(verts: Tensor, sdf: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """Marching tets on the grid of :func:`tet_grid` without materialising its ``6 R^3`` tets: only the
    cubes whose corners change sign are split. Same output as ``marching_tets(verts, tet_grid(R)[1], sdf)``.

    Args:
        verts: ((R + 1)^3, 3) (deformed) grid vertices.
        sdf: ((R + 1)^3,) signed distance, negative inside.
        resolution: R.
    """
    n = resolution + 1
    assert sdf.shape[0] == n**3, (sdf.shape, resolution)
    with torch.no_grad():
        pos = (sdf > 0).reshape(n, n, n)
        corners = [pos[i:i + resolution, j:j + resolution, k:k + resolution]
                   for i in (0, 1) for j in (0, 1) for k in (0, 1)]
        stack = torch.stack(corners)
        mixed = stack.any(0) & ~stack.all(0)
        cubes = mixed.nonzero()
    return marching_tets(verts, cube_tets(cubes, resolution), sdf)



def band_cubes(sdf_fn, resolution: int, bound: float = 1.0, band: float = 2.0, coarse: int = 16,
               chunk: int = 2**18) -> Tensor:
    """Cubes of the ``resolution`` grid within ``band`` cells of the zero level set of ``sdf_fn``,
    found coarse to fine, so memory grows with the surface, not the volume.

    A cube of side ``h`` is kept at each level when ``|sdf(centre)| <= (sqrt(3) / 2) h + band * cell``
    (cell: the finest cube side), then split into 8 until the finest level; a true distance
    function can therefore never lose a cube that the surface or the band touches.

    Args:
        sdf_fn: ``[N, 3] -> [N]`` signed distance (a true distance, or a bound on it).
        resolution: cubes per axis of the finest grid (a power-of-two multiple of ``coarse``).
        bound: the grid spans ``[-bound, bound]^3``.
        band: half-width of the band, in finest cells.
        coarse: cubes per axis of the first level.
        chunk: points per ``sdf_fn`` call.

    Returns:
        ``[C, 3]`` int64 lowest-corner lattice coordinates of the kept cubes (for :func:`cube_tets`).

    Example:
        >>> cubes = band_cubes(lambda p: p.norm(dim=-1) - 0.5, 32, band=1.0, coarse=8)
        >>> bool(0 < cubes.shape[0] < 32**3 // 4)
        True
    """
    level = min(coarse, resolution)
    assert resolution % level == 0 and ((resolution // level) & (resolution // level - 1)) == 0, (resolution, coarse)
    cell = 2 * bound / resolution
    r = torch.arange(level)
    cubes = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)
    while True:
        side = 2 * bound / level
        centres = (cubes.float() + 0.5) * side - bound
        d = torch.cat([sdf_fn(c).reshape(-1).float() for c in centres.split(chunk)]) if len(centres) else centres[:, 0]
        cubes = cubes[d.abs() <= 0.8660254 * side + band * cell]
        if level == resolution:
            return cubes
        bits = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        cubes = (cubes[:, None] * 2 + bits).reshape(-1, 3)
        level *= 2


def band_grid(cubes: Tensor, resolution: int, bound: float = 1.0) -> tuple[Tensor, Tensor]:
    """The corners of ``cubes`` ``[C, 3]`` as a compact vertex set: ``[V, 3]`` positions and ``[C, 8]``
    vertex ids of each cube's corners (corner ``c = x + 2 y + 4 z``), for :func:`marching_tets_cubes`
    (a band-restricted :func:`tet_grid`: its tets are :func:`cube_tets` of the same cubes)."""
    n = resolution + 1
    bits = torch.tensor([[c & 1, c >> 1 & 1, c >> 2 & 1] for c in range(8)], device=cubes.device)
    corners = cubes[:, None, :] + bits
    vid = (corners[..., 0] * n + corners[..., 1]) * n + corners[..., 2]
    ids, inverse = torch.unique(vid.reshape(-1), return_inverse=True)
    ijk = torch.stack([ids // (n * n), ids // n % n, ids % n], dim=-1).float()
    return ijk * (2 * bound / resolution) - bound, inverse.reshape(-1, 8)


def marching_tets_cubes(verts: Tensor, corners: Tensor, sdf: Tensor) -> tuple[Tensor, Tensor]:
    """Marching tets over the 6-tet split of cubes given by their corner vertex ids ``[C, 8]``, splitting
    only the cubes whose corners change sign (same surface as :func:`marching_tets` on all their tets).

    Args:
        verts: ``[V, 3]`` (deformed) vertices; corners: ``[C, 8]`` ids into them; sdf: ``[V]``.
    """
    with torch.no_grad():
        pos = (sdf > 0)[corners]
        mixed = pos.any(1) & ~pos.all(1)
        tets = corners[mixed][:, _CUBE_TETS.to(corners.device)].reshape(-1, 4)
    return marching_tets(verts, tets, sdf)
