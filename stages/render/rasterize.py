"""Triangle rasteriser: per-pixel triangle id and perspective-correct barycentrics (nvdiffrast layout).

The PyTorch path works in two passes:

1. Visibility (no gradient): every triangle's pixel bounding box is enumerated as candidate pixels,
   tested against the triangle's edge functions and depth-tested with one ``scatter_reduce(amin)`` on
   a packed ``(quantised depth << 32) | triangle id`` key. Candidates are produced in chunks of a fixed
   number of pixels (not triangles), so a triangle covering the whole image costs memory of one
   chunk, never more.
2. Barycentrics (differentiable): for each covered pixel the winning triangle's barycentrics are
   recomputed from the clip-space positions, so gradients flow to vertex positions exactly like
   nvdiffrast's ``rasterize`` (interior only; silhouettes get theirs from :mod:`.antialias`).

Output ``rast`` is (B, H, W, 4) = (u, v, z / w, triangle_id + 1), 0 in the last channel for empty
pixels; an attribute interpolates as ``u * a0 + v * a1 + (1 - u - v) * a2``. Row ``i`` of the image is at
NDC ``y = (i + 0.5) / H * 2 - 1`` (nvdiffrast's convention; :func:`.cameras.projection` flips y so
images come out top row first). Triangles with a vertex behind the camera (``w <= 0``) are skipped
(no near-plane clipping); pixels with ``z / w`` outside [-1, 1] are clipped like on a GPU.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

_EMPTY = torch.iinfo(torch.int64).max
_DEPTH_SCALE = float(2**31 - 2)


@functools.lru_cache(maxsize=1)
def _nvdiffrast():
    """The ``nvdiffrast.torch`` module, or None where it is not installed."""
    try:
        import nvdiffrast.torch as dr
    except ImportError:
        return None
    return dr


@functools.lru_cache(maxsize=8)
def _nvdiffrast_context(device: str):
    return _nvdiffrast().RasterizeCudaContext(device=device)


def use_nvdiffrast(pos: Tensor, backend: str) -> bool:
    """Whether ``backend`` (``auto`` / ``torch`` / ``nvdiffrast``) resolves to nvdiffrast for ``pos``."""
    assert backend in ("auto", "torch", "nvdiffrast"), backend
    if backend == "torch":
        return False
    available = pos.is_cuda and _nvdiffrast() is not None
    if backend == "nvdiffrast" and not available:
        raise RuntimeError("backend 'nvdiffrast' needs the nvdiffrast package and CUDA tensors")
    return available


def rasterize(pos: Tensor, tri: Tensor, resolution: tuple[int, int], chunk: int = 2**21,
              backend: str = "auto") -> Tensor:
    """Rasterise triangles given in clip space.

    Args:
        pos: (B, V, 4) or (V, 4) clip-space vertex positions (e.g. ``verts_h @ mvp.transpose(-1, -2)``).
        tri: (F, 3) vertex indices (int32 or int64).
        resolution: (H, W).
        chunk: candidate pixels processed at once (bounds memory: about 60 bytes each).
        backend: ``auto`` (nvdiffrast on CUDA where installed, else PyTorch), ``torch`` or ``nvdiffrast``.

    Returns:
        rast (B, H, W, 4): u, v, z / w, triangle id + 1 (0 = empty), differentiable in u, v, z / w.

    Example:
        >>> pos = torch.tensor([[-1.0, -1, 0, 1], [3, -1, 0, 1], [-1, 3, 0, 1]])
        >>> rast = rasterize(pos, torch.tensor([[0, 1, 2]]), (2, 2))
        >>> rast[..., 3].flatten().tolist()  # one triangle covers the whole 2x2 image
        [1.0, 1.0, 1.0, 1.0]
    """
    if pos.dim() == 2:
        pos = pos[None]
    assert pos.dim() == 3 and pos.shape[-1] == 4, pos.shape
    assert tri.dim() == 2 and tri.shape[-1] == 3, tri.shape
    height, width = resolution
    if use_nvdiffrast(pos, backend):
        rast, _ = _nvdiffrast().rasterize(_nvdiffrast_context(str(pos.device)), pos.contiguous().float(),
                                          tri.int().contiguous(), (height, width))
        return rast
    tri = tri.long()
    out = []
    for b in range(pos.shape[0]):
        with torch.no_grad():
            face = visible_faces(pos[b].detach().float(), tri, height, width, chunk)
        out.append(barycentrics(pos[b], tri, face, height, width))
    return torch.stack(out)


def _screen_setup(pos: Tensor, tri: Tensor, height: int, width: int):
    """Per-triangle pixel-space edge and depth planes, pixel bounding boxes and validity."""
    v = pos[tri]  # (F, 3, 4)
    w = v[..., 3]
    valid = (w > 1e-8).all(-1)
    ws = torch.where(w > 1e-8, w, torch.ones_like(w))
    px = (v[..., 0] / ws + 1) * (width / 2) - 0.5
    py = (v[..., 1] / ws + 1) * (height / 2) - 0.5
    pz = v[..., 2] / ws
    # Edge opposite vertex i runs between vertices i+1 and i+2. Its edge function is evaluated from the
    # lower-indexed end with the same float operations in both triangles sharing it, so the two
    # values are exact negatives: a pixel centre on a shared edge is never missed by both.
    ia, ib = tri.roll(-1, 1), tri.roll(-2, 1)
    swap = ia > ib
    xa, xb, ya, yb = px.roll(-1, 1), px.roll(-2, 1), py.roll(-1, 1), py.roll(-2, 1)
    xl, yl = torch.where(swap, xb, xa), torch.where(swap, yb, ya)
    xh, yh = torch.where(swap, xa, xb), torch.where(swap, ya, yb)
    ea, eb = yl - yh, xh - xl  # E(x, y) = ea (x - xl) + eb (y - yl), positive left of lo -> hi
    area = (ea * (px - xl) + eb * (py - yl))[:, 0] * torch.where(swap[:, 0], -1.0, 1.0)
    valid &= area.abs() > 1e-12
    sign = torch.where(swap, -1.0, 1.0) * torch.where(area < 0, -1.0, 1.0)[:, None]
    edges = torch.stack([ea * sign, eb * sign, xl, yl], dim=-1)  # inside: all >= 0
    inv = torch.where(valid, 1 / torch.where(area == 0, torch.ones_like(area), area), torch.zeros_like(area))
    ba, bb = ea * sign * inv[:, None].abs(), eb * sign * inv[:, None].abs()  # barycentric gradients
    bc = -(ba * xl + bb * yl)
    plane = torch.stack([(ba * pz).sum(1), (bb * pz).sum(1), (bc * pz).sum(1)], dim=1)  # z = plane . (x, y, 1)
    x0 = px.amin(1).ceil().clamp(min=0)
    xe = px.amax(1).floor().clamp(max=width - 1)
    y0 = py.amin(1).ceil().clamp(min=0)
    ye = py.amax(1).floor().clamp(max=height - 1)
    valid &= (x0 <= xe) & (y0 <= ye)
    return edges, plane, x0, xe, y0, ye, valid


def visible_faces(pos: Tensor, tri: Tensor, height: int, width: int, chunk: int = 2**21) -> Tensor:
    """Nearest triangle per pixel (no gradient).

    Args:
        pos: (V, 4) clip-space positions.
        tri: (F, 3) int64 vertex indices.
        height, width: image size.
        chunk: candidate pixels per batch of work.

    Returns:
        (H * W,) int64 triangle ids, -1 where no triangle covers the pixel centre.
    """
    edges, plane, x0, xe, y0, ye, valid = _screen_setup(pos, tri, height, width)
    ids = valid.nonzero().squeeze(1)
    sx = (xe - x0 + 1)[ids].long()
    sy = (ye - y0 + 1)[ids].long()
    counts = sx * sy
    ends = counts.cumsum(0)
    total = int(ends[-1]) if len(ends) else 0
    zbuf = torch.full((height * width,), _EMPTY, dtype=torch.int64, device=pos.device)
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        f0 = int(torch.searchsorted(ends, torch.tensor(start, device=ends.device), right=True))
        f1 = int(torch.searchsorted(ends, torch.tensor(stop - 1, device=ends.device), right=True))
        local = counts[f0:f1 + 1].clone()
        local[0] = ends[f0] - start
        local[-1] -= ends[f1] - stop
        if f0 == f1:
            local[0] = stop - start
        sel = torch.repeat_interleave(torch.arange(f0, f1 + 1, device=pos.device), local)
        offset = torch.arange(start, stop, device=pos.device) - (ends[sel] - counts[sel])
        _depth_test(zbuf, ids[sel], offset, sx[sel], edges, plane, x0, y0, width)
    return torch.where(zbuf == _EMPTY, -1, zbuf & 0xFFFFFFFF)


def _depth_test(zbuf: Tensor, face: Tensor, offset: Tensor, sx: Tensor, edges: Tensor, plane: Tensor,
                x0: Tensor, y0: Tensor, width: int) -> None:
    """Inside and depth test of candidate pixels ``offset`` within each ``face``'s bounding box."""
    x = x0[face] + (offset % sx)
    y = y0[face] + torch.div(offset, sx, rounding_mode="floor")
    e = edges[face]  # (N, 3, 4): a, b, x_lo, y_lo per edge
    b = e[..., 0] * (x[:, None] - e[..., 2]) + e[..., 1] * (y[:, None] - e[..., 3])
    inside = (b >= 0).all(1)
    p = plane[face]
    z = p[:, 0] * x + p[:, 1] * y + p[:, 2]
    inside &= (z >= -1) & (z <= 1)
    key = ((z[inside] + 1) * (0.5 * _DEPTH_SCALE)).long() << 32 | face[inside]
    pix = (y[inside] * width + x[inside]).long()
    zbuf.scatter_reduce_(0, pix, key, reduce="amin")


def barycentrics(pos: Tensor, tri: Tensor, face: Tensor, height: int, width: int) -> Tensor:
    """Perspective-correct barycentrics of each pixel centre in its triangle (differentiable in ``pos``).

    Args:
        pos: (V, 4) clip-space positions.
        tri: (F, 3) int64 vertex indices.
        face: (H * W,) triangle id per pixel, -1 for empty.
        height, width: image size.

    Returns:
        (H, W, 4): u, v, z / w, face + 1.
    """
    pix = (face >= 0).nonzero().squeeze(1)
    f = face[pix]
    v = pos[tri[f]]  # (P, 3, 4)
    w = v[..., 3]
    nx, ny = v[..., 0] / w, v[..., 1] / w
    cx = ((pix % width).to(pos.dtype) + 0.5) * (2 / width) - 1
    cy = (torch.div(pix, width, rounding_mode="floor").to(pos.dtype) + 0.5) * (2 / height) - 1
    x1, x2, y1, y2 = nx.roll(-1, 1), nx.roll(-2, 1), ny.roll(-1, 1), ny.roll(-2, 1)
    edge = (x2 - x1) * (cy[:, None] - y1) - (y2 - y1) * (cx[:, None] - x1)  # (P, 3), opposite vertex i
    screen = edge / edge.sum(1, keepdim=True)
    persp = screen / w
    persp = persp / persp.sum(1, keepdim=True)
    z = (screen * v[..., 2] / w).sum(1)
    vals = torch.stack([persp[:, 0], persp[:, 1], z, (f + 1).to(pos.dtype)], dim=1)
    out = torch.zeros(height * width, 4, dtype=pos.dtype, device=pos.device).index_copy(0, pix, vals)
    return out.reshape(height, width, 4)


def transform_to_clip(verts: Tensor, mvp: Tensor) -> Tensor:
    """Clip-space positions (B, V, 4) of world vertices ``verts`` (V, 3) under ``mvp`` (B, 4, 4)."""
    verts_h = torch.nn.functional.pad(verts, (0, 1), value=1.0)
    return torch.einsum("vk,bjk->bvj", verts_h, mvp.to(verts))
