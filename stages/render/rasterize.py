"""Triangle rasteriser: per-pixel triangle id and perspective-correct barycentrics (nvdiffrast layout).

The PyTorch path works in two passes:

1. Visibility (no gradient): every triangle's pixel bounding box is enumerated as candidate pixels,
   tested against the triangle's edge functions and depth-tested with ``scatter_reduce(amin)`` on a
   packed ``(quantised depth << 32) | triangle id`` key. Triangles are grouped by bounding-box size and
   each group is tested against a block of candidate pixels of bounded size (``chunk``), so a
   triangle covering the whole image costs memory of one block, never more.
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
              backend: str = "auto", cull_backfaces: bool = False) -> Tensor:
    """Rasterise triangles given in clip space.

    Args:
        pos: (B, V, 4) or (V, 4) clip-space vertex positions (e.g. ``verts_h @ mvp.transpose(-1, -2)``).
        tri: (F, 3) vertex indices (int32 or int64).
        resolution: (H, W).
        chunk: candidate pixels processed at once (bounds memory: about 60 bytes each).
        backend: ``auto`` (nvdiffrast on CUDA where installed, else PyTorch), ``torch`` or ``nvdiffrast``.
        cull_backfaces: skip triangles that are counter-clockwise in NDC, i.e. the back faces of an
            outward-oriented mesh under the y-flipped projection of :mod:`.cameras`. Only for closed
            meshes, where a back face is never the first surface hit; about halves the work (PyTorch
            path only).

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
            face = visible_faces(pos[b].detach().float(), tri, height, width, chunk, cull_backfaces)
        out.append(barycentrics(pos[b], tri, face, height, width))
    return torch.stack(out)


def _screen_setup(pos: Tensor, tri: Tensor, height: int, width: int, cull_backfaces: bool = False):
    """Pixel-space edge functions, depth planes and bounding boxes of the triangles that can cover a
    pixel centre. Works on one 1-D tensor per quantity and uses ``index_select`` (advanced indexing,
    ``roll`` and transposing copies are several times slower on CPU).

    Returns:
        ids (K,) of those triangles and a table (19, K) of rows: for each edge i, ``a, b, x_lo, y_lo``
        (inside where ``a (x - x_lo) + b (y - y_lo) >= 0`` for all three edges); the depth plane
        ``p0, p1, p2`` (``z = p0 x + p1 y + p2``); the pixel bounding box ``x0, xe, y0, ye``.
    """
    w = pos[:, 3]
    ws = torch.where(w > 1e-8, w, torch.full_like(w, float("nan")))  # behind the camera: NaN fails every test
    vert = torch.stack([(pos[:, 0] / ws + 1) * (width / 2) - 0.5, (pos[:, 1] / ws + 1) * (height / 2) - 0.5])
    corners = tri.t().contiguous()
    c = [vert.index_select(1, corners[i]) for i in range(3)]  # 3 x (2, F): x, y
    box = torch.stack([torch.minimum(torch.minimum(c[0][0], c[1][0]), c[2][0]).ceil().clamp(min=0),
                       torch.maximum(torch.maximum(c[0][0], c[1][0]), c[2][0]).floor().clamp(max=width - 1),
                       torch.minimum(torch.minimum(c[0][1], c[1][1]), c[2][1]).ceil().clamp(min=0),
                       torch.maximum(torch.maximum(c[0][1], c[1][1]), c[2][1]).floor().clamp(max=height - 1)])
    area = (c[1][0] - c[0][0]) * (c[2][1] - c[0][1]) - (c[1][1] - c[0][1]) * (c[2][0] - c[0][0])
    valid = (box[0] <= box[1]) & (box[2] <= box[3]) & (area.abs() > 1e-12)
    if cull_backfaces:  # pixel and NDC axes agree in orientation: counter-clockwise is positive
        valid &= area < 0
    ids = valid.nonzero().squeeze(1)
    box, area = box.index_select(1, ids), area.index_select(0, ids)
    vid = [corners[i].index_select(0, ids) for i in range(3)]
    c = [ci.index_select(1, ids) for ci in c]
    z = [(pos[:, 2] / ws).index_select(0, v) for v in vid]
    orient = torch.where(area < 0, -1.0, 1.0)
    rows = []
    for i in range(3):
        # Edge opposite corner i, from corner j to k: E = a (x - x_lo) + b (y - y_lo) with (x_lo, y_lo)
        # its lower-indexed vertex. a, b change sign exactly between the two triangles sharing the edge
        # (a - b == -(b - a) in floating point) and both use the same reference vertex, so the two
        # values are exact negatives: a pixel centre on a shared edge is never missed by both.
        j, k = (i + 1) % 3, (i + 2) % 3
        swap = vid[j] > vid[k]
        rows += [(c[j][1] - c[k][1]) * orient, (c[k][0] - c[j][0]) * orient,
                 torch.where(swap, c[k][0], c[j][0]), torch.where(swap, c[k][1], c[j][1])]
    # depth plane z = p0 x + p1 y + p2 through the three corners
    dx1, dy1, dz1 = c[1][0] - c[0][0], c[1][1] - c[0][1], z[1] - z[0]
    dx2, dy2, dz2 = c[2][0] - c[0][0], c[2][1] - c[0][1], z[2] - z[0]
    p0, p1 = (dz1 * dy2 - dz2 * dy1) / area, (dx1 * dz2 - dx2 * dz1) / area
    rows += [p0, p1, z[0] - p0 * c[0][0] - p1 * c[0][1]]
    return ids, torch.cat([torch.stack(rows), box])


def _bucket(size: Tensor) -> Tensor:
    """Bounding-box side bucket: exact up to 4 pixels, then the next power of two."""
    pow2 = torch.exp2(torch.ceil(torch.log2(size.float()))).long()
    return torch.where(size <= 4, size, pow2)


def visible_faces(pos: Tensor, tri: Tensor, height: int, width: int, chunk: int = 2**21,
                  cull_backfaces: bool = False) -> Tensor:
    """Nearest triangle per pixel (no gradient).

    Triangles are grouped by bounding-box size (exact up to 4 x 4 pixels, powers of two above), so each
    group is tested against one fixed block of candidate pixels by broadcasting, without per-pixel
    gathers. Blocks hold at most ``chunk`` candidates: groups are split over triangles and, for
    triangles larger than a block, over rows.

    Args:
        pos: (V, 4) clip-space positions.
        tri: (F, 3) int64 vertex indices.
        height, width: image size.
        chunk: candidate pixels per block.
        cull_backfaces: see :func:`rasterize`.

    Returns:
        (H * W,) int64 triangle ids, -1 where no triangle covers the pixel centre.
    """
    ids, table = _screen_setup(pos, tri, height, width, cull_backfaces)
    x0, xe, y0, ye = table[15:19]
    bx, by = _bucket((xe - x0 + 1).long()), _bucket((ye - y0 + 1).long())
    group = (bx * (2 * max(height, width) + 1) + by).to(torch.int32)
    order = torch.argsort(group)
    _, counts = torch.unique_consecutive(group[order], return_counts=True)
    last = counts.cumsum(0) - 1
    zbuf = torch.full((height * width,), _EMPTY, dtype=torch.int64, device=pos.device)
    for members, kx, ky in zip(order.split(counts.tolist()), bx[order][last].tolist(), by[order][last].tolist()):
        rows = ky if kx * ky <= chunk else max(1, chunk // kx)
        dx = torch.arange(kx, device=pos.device, dtype=pos.dtype)
        for faces in members.split(max(1, chunk // (kx * rows))):
            for r0 in range(0, ky, rows):
                dy = torch.arange(r0, min(ky, r0 + rows), device=pos.device, dtype=pos.dtype)
                _depth_test(zbuf, faces, ids, dx, dy, table, width)
    return torch.where(zbuf == _EMPTY, -1, zbuf & 0xFFFFFFFF)


def _depth_test(zbuf: Tensor, local: Tensor, ids: Tensor, dx: Tensor, dy: Tensor, table: Tensor,
                width: int) -> None:
    """Inside and depth test of the pixel block ``dy x dx`` offset from the bounding-box corner of each
    triangle ``local`` (columns of the :func:`_screen_setup` table; ``ids`` maps them to triangle ids)."""
    t = table.index_select(1, local)[:, :, None, None]  # (19, n, 1, 1)
    face = ids.index_select(0, local)
    x0, y0 = t[15, :, 0, 0], t[17, :, 0, 0]
    x = t[15] + dx  # (n, 1, kx)
    y = t[17] + dy[:, None]  # (n, ky, 1)
    inside = (x <= t[16]) & (y <= t[18])
    for i in range(3):
        inside &= t[4 * i] * (x - t[4 * i + 2]) + t[4 * i + 1] * (y - t[4 * i + 3]) >= 0
    z = t[12] * x + t[13] * y + t[14]
    inside &= (z >= -1) & (z <= 1)
    hit = inside.reshape(-1).nonzero().squeeze(1)
    n, ky, kx = inside.shape
    tri_of = torch.div(hit, ky * kx, rounding_mode="floor")
    pix = (y0.index_select(0, tri_of) + dy[0]) * width + x0.index_select(0, tri_of)
    key = ((z.reshape(-1).index_select(0, hit) + 1) * (0.5 * _DEPTH_SCALE)).long() << 32
    zbuf.scatter_reduce_(0, pix.long() + torch.div(hit % (ky * kx), kx, rounding_mode="floor") * width + hit % kx,
                         key | face.index_select(0, tri_of), reduce="amin")


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
