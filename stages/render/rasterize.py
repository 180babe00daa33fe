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
        ids (K,) of those triangles and a table (16, K) of rows: for each edge i, ``a, b, c`` (inside
        where ``a x + b y + c >= 0`` for all three edges); the depth plane ``p0, p1, p2``
        (``z = p0 x + p1 y + p2``); the pixel bounding box ``x0, xe, y0, ye``.
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
    table = torch.empty(16, ids.shape[0], dtype=pos.dtype, device=pos.device)  # written in place: no copies
    torch.index_select(box, 1, ids, out=table[12:16])
    area = area.index_select(0, ids)
    vid = [corners[i].index_select(0, ids) for i in range(3)]
    c = [ci.index_select(1, ids) for ci in c]
    z = [(pos[:, 2] / ws).index_select(0, v) for v in vid]
    orient = torch.where(area < 0, -1.0, 1.0)
    for i in range(3):
        # Edge opposite corner i, from corner j to k: E = a x + b y + c, c = -(a x_lo + b y_lo) with
        # (x_lo, y_lo) its lower-indexed vertex. a, b change sign exactly between the two triangles
        # sharing the edge (a - b == -(b - a) in floating point) and both use the same reference
        # vertex, so their E are exact negatives: a pixel centre on a shared edge is never missed by both.
        j, k = (i + 1) % 3, (i + 2) % 3
        swap = vid[j] > vid[k]
        a = torch.mul(c[j][1] - c[k][1], orient, out=table[3 * i])
        b = torch.mul(c[k][0] - c[j][0], orient, out=table[3 * i + 1])
        torch.neg(a * torch.where(swap, c[k][0], c[j][0]) + b * torch.where(swap, c[k][1], c[j][1]),
                  out=table[3 * i + 2])
    # depth plane z = p0 x + p1 y + p2 through the three corners
    dx1, dy1, dz1 = c[1][0] - c[0][0], c[1][1] - c[0][1], z[1] - z[0]
    dx2, dy2, dz2 = c[2][0] - c[0][0], c[2][1] - c[0][1], z[2] - z[0]
    torch.div(dz1 * dy2 - dz2 * dy1, area, out=table[9])
    torch.div(dx1 * dz2 - dx2 * dz1, area, out=table[10])
    torch.sub(z[0], table[9] * c[0][0] + table[10] * c[0][1], out=table[11])
    return ids, table


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
    x0, xe, y0, ye = table[12:16]
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
    triangle ``local`` (columns of the :func:`_screen_setup` table; ``ids`` maps them to triangle ids).

    Candidates are laid out (block offset, triangle) so that every elementwise kernel runs over a long
    contiguous triangle axis (a short innermost axis of 1-4 pixels makes CPU kernels several times slower).
    """
    t = table.index_select(1, local)  # (16, n)
    n = t.shape[1]
    x = t[12] + dx.repeat(dy.shape[0])[:, None]  # (m, n)
    y = t[14] + dy.repeat_interleave(dx.shape[0])[:, None]
    inside = (x <= t[13]) & (y <= t[15])
    for i in range(3):
        inside &= t[3 * i] * x + t[3 * i + 1] * y + t[3 * i + 2] >= 0
    z = t[9] * x + t[10] * y + t[11]
    inside &= (z >= -1) & (z <= 1)
    hit = inside.reshape(-1).nonzero().squeeze(1)
    key = ((z.reshape(-1).index_select(0, hit) + 1) * (0.5 * _DEPTH_SCALE)).long() << 32
    pix = y.reshape(-1).index_select(0, hit) * width + x.reshape(-1).index_select(0, hit)
    zbuf.scatter_reduce_(0, pix.long(), key | ids.index_select(0, local.index_select(0, hit % n)), reduce="amin")


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
    f = face.index_select(0, pix)
    corners = tri.index_select(0, f).t().contiguous()
    v = [pos.index_select(0, corners[i]) for i in range(3)]  # 3 x (P, 4)
    w = [vi[:, 3] for vi in v]
    nx, ny = [vi[:, 0] / wi for vi, wi in zip(v, w)], [vi[:, 1] / wi for vi, wi in zip(v, w)]
    cx = ((pix % width).to(pos.dtype) + 0.5) * (2 / width) - 1
    cy = (torch.div(pix, width, rounding_mode="floor").to(pos.dtype) + 0.5) * (2 / height) - 1
    edge = []
    for i in range(3):  # edge function of the edge opposite corner i, at the pixel centre
        j, k = (i + 1) % 3, (i + 2) % 3
        edge.append((nx[k] - nx[j]) * (cy - ny[j]) - (ny[k] - ny[j]) * (cx - nx[j]))
    total = edge[0] + edge[1] + edge[2]
    screen = [e / total for e in edge]
    persp = [b / wi for b, wi in zip(screen, w)]
    norm = persp[0] + persp[1] + persp[2]
    z = sum(b * vi[:, 2] / wi for b, vi, wi in zip(screen, v, w))
    vals = torch.stack([persp[0] / norm, persp[1] / norm, z, (f + 1).to(pos.dtype)], dim=1)
    out = torch.zeros(height * width, 4, dtype=pos.dtype, device=pos.device).index_copy(0, pix, vals)
    return out.reshape(height, width, 4)


def transform_to_clip(verts: Tensor, mvp: Tensor) -> Tensor:
    """Clip-space positions (B, V, 4) of world vertices ``verts`` (V, 3) under ``mvp`` (B, 4, 4)."""
    verts_h = torch.nn.functional.pad(verts, (0, 1), value=1.0)
    return torch.einsum("vk,bjk->bvj", verts_h, mvp.to(verts))
