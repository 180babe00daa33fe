"""Analytic silhouette antialiasing: the source of vertex gradients for mask and colour losses.

Same idea as nvdiffrast's ``antialias`` (Laine et al. 2020, section 3.3): for every pair of
horizontally or vertically adjacent pixels that show different triangles, the front triangle is
found; if the edge where the segment between the two pixel centres leaves it is a silhouette edge
(a mesh boundary, or an edge between a front- and a back-facing triangle in this view), the pixel on
the far side of the crossing is blended with the other one by the covered fraction. With the
crossing at ``t`` (0 at the front pixel's centre, 1 at the other's):

- ``t > 1/2``: the other pixel takes ``(t - 1/2) * (c_front - c_other)``;
- ``t < 1/2``: the front pixel takes ``(1/2 - t) * (c_other - c_front)``.

``t`` depends on the vertex positions, so a loss on the antialiased image moves silhouettes. An
axis-aligned edge at pixel coordinate ``x`` gives exactly the covered fraction of the straddled
pixel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from stages.render.rasterize import _nvdiffrast, use_nvdiffrast


@dataclass
class Topology:
    """Edge adjacency of a triangle mesh.

    Attributes:
        face_edges: [F, 3] edge id of the edge opposite each face corner.
        edge_faces: [E, 2] the faces on each edge, -1 where an edge has one face only.
        closed: every edge has exactly two faces that run along it in opposite directions (a closed,
            consistently oriented surface).
    """

    face_edges: Tensor
    edge_faces: Tensor
    closed: bool = False


def build_topology(tri: Tensor) -> Topology:
    """Edge adjacency of ``tri`` [F, 3]; compute once per mesh and pass to :func:`antialias`.

    Example:
        >>> quad = build_topology(torch.tensor([[0, 1, 2], [0, 2, 3]]))  # two triangles sharing edge 0-2
        >>> quad.edge_faces.tolist(), quad.closed  # four boundary edges (-1) and the shared one
        ([[0, -1], [0, 1], [1, -1], [0, -1], [1, -1]], False)
        >>> build_topology(torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])).closed  # a tetrahedron
        True
    """
    tri = tri.long()
    n = tri.shape[0]
    corners = torch.stack([tri.roll(-1, 1), tri.roll(-2, 1)], dim=-1).reshape(-1, 2)  # [3F, 2]
    corners = corners.sort(dim=1).values
    key = corners[:, 0] * (int(tri.max()) + 1) + corners[:, 1]
    edges, inverse = torch.unique(key, return_inverse=True)
    face_of = torch.arange(n, device=tri.device).repeat_interleave(3)
    order = torch.argsort(inverse, stable=True)
    sorted_edge = inverse[order]
    first = torch.ones_like(sorted_edge, dtype=torch.bool)
    first[1:] = sorted_edge[1:] != sorted_edge[:-1]
    edge_faces = torch.full((edges.shape[0], 2), -1, dtype=torch.long, device=tri.device)
    edge_faces[sorted_edge[first], 0] = face_of[order[first]]
    second = ~first
    edge_faces[sorted_edge[second], 1] = face_of[order[second]]
    directed = tri.roll(-1, 1).reshape(-1) * (int(tri.max()) + 1) + tri.roll(-2, 1).reshape(-1)
    counts = torch.bincount(inverse, minlength=edges.shape[0])
    closed = bool((counts == 2).all()) and torch.unique(directed).shape[0] == directed.shape[0]
    return Topology(inverse.reshape(n, 3), edge_faces, closed)


def _silhouette_edges(pos_ndc: Tensor, tri: Tensor, topo: Topology) -> Tensor:
    """[E] bool: boundary edges and edges between front- and back-facing triangles."""
    v = pos_ndc[tri]
    e1, e2 = v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]
    facing = (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) > 0
    f0, f1 = topo.edge_faces[:, 0], topo.edge_faces[:, 1]
    return (f1 < 0) | (facing[f0] != facing[f1.clamp(min=0)])


def antialias(color: Tensor, rast: Tensor, pos: Tensor, tri: Tensor, topology: Topology | None = None,
              backend: str = "auto") -> Tensor:
    """Blend colours across silhouette edges so that their position is differentiable.

    Args:
        color: [B, H, W, C] shaded image (e.g. interpolated attributes or a mask).
        rast: [B, H, W, 4] from :func:`stages.render.rasterize.rasterize` of ``pos``.
        pos: [B, V, 4] clip-space positions (gradients flow to them).
        tri: [F, 3] vertex indices.
        topology: :func:`build_topology` of ``tri`` (built here when None).
        backend: ``auto`` / ``torch`` / ``nvdiffrast``.

    Returns:
        [B, H, W, C] antialiased image.

    Example:
        A triangle whose right edge is vertical at NDC x = 0.125, i.e. a quarter into pixel 2 of a
        1 x 4 image: the rasterised mask is a hard step, the antialiased one covers that quarter.

        >>> from stages.render.rasterize import rasterize
        >>> pos = torch.tensor([[[-3.0, -3, 0, 1], [0.125, -3, 0, 1], [0.125, 3, 0, 1]]])
        >>> tri = torch.tensor([[0, 1, 2]])
        >>> rast = rasterize(pos, tri, (1, 4))
        >>> mask = (rast[..., 3:] > 0).float()
        >>> mask.flatten().tolist(), antialias(mask, rast, pos, tri).flatten().tolist()
        ([1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.25, 0.0])
    """
    assert color.shape[:3] == rast.shape[:3], (color.shape, rast.shape)
    if pos.dim() == 2:
        pos = pos[None]
    if use_nvdiffrast(pos, backend):
        return _nvdiffrast().antialias(color.contiguous(), rast.contiguous(), pos.contiguous().float(),
                                       tri.int().contiguous())
    tri = tri.long()
    topo = topology if topology is not None else build_topology(tri)
    b, h, w, c = color.shape
    out = color.reshape(-1, c)
    for bi in range(b):
        ndc = pos[bi, :, :2] / pos[bi, :, 3:4]
        sil = _silhouette_edges(ndc.detach(), tri, topo)
        for axis in (1, 2):
            target, delta = _pair_deltas(color[bi], rast[bi], ndc, tri, topo, sil, axis)
            out = out.index_add(0, target + bi * h * w, delta)
    return out.reshape(b, h, w, c)


def _pair_deltas(color: Tensor, rast: Tensor, ndc: Tensor, tri: Tensor, topo: Topology, sil: Tensor,
                 axis: int):
    """Colour changes for one image along one axis (1: vertical pairs, 2: horizontal pairs).

    Returns flat target pixel indices [N] and colour deltas [N, C].
    """
    h, w = rast.shape[:2]
    face = rast[..., 3].long() - 1
    z = rast[..., 2].detach()
    idx = torch.arange(h * w, device=rast.device).reshape(h, w)
    sl_a = (slice(None, -1), slice(None)) if axis == 1 else (slice(None), slice(None, -1))
    sl_b = (slice(1, None), slice(None)) if axis == 1 else (slice(None), slice(1, None))
    fa, fb, za, zb = face[sl_a], face[sl_b], z[sl_a], z[sl_b]
    a_front = (fa >= 0) & ((fb < 0) | (za < zb))
    front = torch.where(a_front, idx[sl_a], idx[sl_b]).reshape(-1)
    other = torch.where(a_front, idx[sl_b], idx[sl_a]).reshape(-1)
    # only pairs whose front triangle has a silhouette edge can blend (interior pairs are most of them)
    has_sil = torch.cat([sil.new_zeros(1), sil[topo.face_edges].any(1)])  # shifted by one: empty -> False
    t_face_all = face.reshape(-1).index_select(0, front)
    maybe = (fa != fb).reshape(-1) & has_sil.index_select(0, t_face_all + 1)
    sel = maybe.nonzero().squeeze(1)
    front, other, t_face = front.index_select(0, sel), other.index_select(0, sel), t_face_all.index_select(0, sel)
    t, edge = _exit_crossing(ndc, tri.index_select(0, t_face), front, other, h, w)
    keep = (t >= 0) & (t <= 1) & sil.index_select(0, topo.face_edges[t_face, edge])
    keep = keep.nonzero().squeeze(1)
    t, front, other = t.index_select(0, keep), front.index_select(0, keep), other.index_select(0, keep)
    flat = color.reshape(h * w, -1)
    c_front, c_other = flat.index_select(0, front), flat.index_select(0, other)
    far = t > 0.5
    target = torch.where(far, other, front)
    weight = torch.where(far, t - 0.5, 0.5 - t)[:, None]
    delta = weight * torch.where(far[:, None], c_front - c_other, c_other - c_front)
    return target, delta


def _exit_crossing(ndc: Tensor, corners: Tensor, front: Tensor, other: Tensor, h: int, w: int):
    """Where the segment from pixel ``front`` to pixel ``other`` leaves the triangle ``corners`` [N, 3].

    Returns the crossing parameter t [N], differentiable in ``ndc`` (inf when it never leaves), and
    the index [N] of the crossed edge, named by the opposite corner.
    """
    def centre(p):
        x = (p % w).to(ndc.dtype) + 0.5
        y = torch.div(p, w, rounding_mode="floor").to(ndc.dtype) + 0.5
        return torch.stack([x * (2 / w) - 1, y * (2 / h) - 1], dim=-1)

    v = ndc[corners]  # [N, 3, 2]
    v1, v2 = v.roll(-1, 1), v.roll(-2, 1)

    def edge_fn(p):
        return (v2[..., 0] - v1[..., 0]) * (p[:, None, 1] - v1[..., 1]) - (v2[..., 1] - v1[..., 1]) * (
            p[:, None, 0] - v1[..., 0])

    area = edge_fn(v[:, 0])[:, 0:1]
    bp, bq = edge_fn(centre(front)) / area, edge_fn(centre(other)) / area
    crossing = bq < 0
    t_all = torch.where(crossing, bp / torch.where(crossing, bp - bq, torch.ones_like(bq)),
                        torch.full_like(bp, float("inf")))
    t, edge = t_all.min(dim=1)
    return t, edge
