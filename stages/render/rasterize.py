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

Output ``rast`` is [B, H, W, 4] = (u, v, z / w, triangle_id + 1), 0 in the last channel for empty
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
        pos: [B, V, 4] or [V, 4] clip-space vertex positions (e.g. ``verts_h @ mvp.transpose(-1, -2)``).
        tri: [F, 3] vertex indices (int32 or int64).
        resolution: ``(height, width)`` of the output.
        chunk: candidate pixels processed at once (bounds memory: about 60 bytes each).
        backend: ``auto`` (nvdiffrast on CUDA where installed, else PyTorch), ``torch`` or ``nvdiffrast``.
        cull_backfaces: skip triangles that are counter-clockwise in NDC, i.e. the back faces of an
            outward-oriented mesh under the y-flipped projection of :mod:`.cameras`. Only for closed
            meshes, where a back face is never the first surface hit; about halves the work (PyTorch
            path only).

    Returns:
        rast [B, H, W, 4]: u, v, z / w, triangle id + 1 (0 = empty), differentiable in u, v, z / w.

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
    pixel centre, sorted by bounding-box size bucket (see :func:`_bucket_index`).

    Two passes: the first finds every triangle's pixel bounding box, drops those that hold no pixel
    centre (and degenerate, behind-camera and culled ones) and sorts the rest by bucket; the second
    computes the planes of the kept triangles only, already in bucket order, so that each bucket is a
    contiguous run of table columns. Works on one 1-D tensor per quantity, in place where it can (on
    CPU a fresh large tensor costs more than the arithmetic), with ``index_select`` gathers (advanced
    indexing and transposing copies are several times slower) and without ``torch.where`` on
    unpredictable masks (it is not vectorised).

    Returns:
        ids [K] of those triangles; a table [16, K] of rows: for each edge i, ``a, b, c`` (inside
        where ``a x + b y + c >= 0`` for all three edges); the depth plane ``p0, p1, p2``
        (``z = p0 x + p1 y + p2``); the pixel bounding box ``x0, xe, y0, ye``; and the buckets, a list
        of ``(start, end, kx, ky)``: columns ``start:end`` have boxes of at most ``kx x ky`` pixels,
        exactly that size where ``kx`` / ``ky`` is at most 4.
    """
    w = pos[:, 3]
    ws = torch.where(w > 1e-8, w, torch.full_like(w, float("nan")))  # behind the camera: NaN fails every test
    vx = (pos[:, 0] / ws + 1) * (width / 2) - 0.5
    vy = (pos[:, 1] / ws + 1) * (height / 2) - 0.5
    corners = [tri[:, i].contiguous() for i in range(3)]  # far cheaper than tri.t().contiguous()
    # pass 1: bounding boxes, validity and bucket of every triangle
    ids, buckets = _kept_by_bucket(vx, vy, corners, height, width, cull_backfaces)
    # pass 2: planes of the kept triangles, in bucket order
    vid = [c.index_select(0, ids) for c in corners]
    table = torch.empty(27, ids.shape[0], dtype=pos.dtype, device=pos.device)  # rows 16: are scratch
    _edge_and_depth_planes(table, vid, _corners_box_area(vx, vy, vid, table, height, width), pos[:, 2] / ws)
    return ids, table[:16], buckets


def _corners_box_area(vx: Tensor, vy: Tensor, vid: list[Tensor], out: Tensor, height: int, width: int) -> Tensor:
    """Gathers corner x, y into out[16:22], the box into out[12:16], d = corner - corner 0 into
    out[22:26] (dx1, dy1, dx2, dy2); returns the doubled signed area (in out[26])."""
    cx, cy = out[16:19], out[19:22]
    for i in range(3):
        torch.index_select(vx, 0, vid[i], out=cx[i])
        torch.index_select(vy, 0, vid[i], out=cy[i])
    for row, c, fn in ((12, cx, torch.minimum), (13, cx, torch.maximum), (14, cy, torch.minimum),
                       (15, cy, torch.maximum)):
        fn(fn(c[0], c[1], out=out[row]), c[2], out=out[row])
    out[12].ceil_().clamp_(min=0)
    out[13].floor_().clamp_(max=width - 1)
    out[14].ceil_().clamp_(min=0)
    out[15].floor_().clamp_(max=height - 1)
    dx1, dy1, dx2, dy2, area = out[22], out[23], out[24], out[25], out[26]
    torch.sub(cx[1], cx[0], out=dx1)
    torch.sub(cy[1], cy[0], out=dy1)
    torch.sub(cx[2], cx[0], out=dx2)
    torch.sub(cy[2], cy[0], out=dy2)
    torch.mul(dx1, dy2, out=area)
    return area.sub_(dy1 * dx2)


def _kept_by_bucket(vx: Tensor, vy: Tensor, corners: list[Tensor], height: int, width: int,
                    cull_backfaces: bool) -> tuple[Tensor, list[tuple[int, int, int, int]]]:
    """Ids of the triangles whose box holds a pixel centre (not degenerate, not culled), sorted by
    bucket, and the buckets as ``(start, end, kx, ky)`` runs of those ids."""
    scratch = torch.empty(27, corners[0].shape[0], dtype=vx.dtype, device=vx.device)
    area = _corners_box_area(vx, vy, corners, scratch, height, width)
    sx = torch.sub(scratch[13], scratch[12], out=scratch[16])  # box size - 1; < 0 (or NaN): no pixel centre
    sy = torch.sub(scratch[15], scratch[14], out=scratch[17])
    valid = (sx >= 0) & (sy >= 0) & (area.abs() > 1e-12)
    if cull_backfaces:  # pixel and NDC axes agree in orientation: counter-clockwise is positive
        valid &= area < 0
    n_buckets = _bucket_index(torch.tensor([float(max(height, width))])).long().item() + 1
    invalid = n_buckets * n_buckets
    key = _bucket_index(sx.add_(1)).mul_(n_buckets).add_(_bucket_index(sy.add_(1)))
    key = torch.where(valid, key, invalid).to(torch.uint8 if invalid < 256 else torch.int32)
    key, order = torch.sort(key)
    bounds = torch.searchsorted(key, torch.arange(invalid + 1, dtype=key.dtype, device=key.device)).tolist()
    buckets = [(bounds[g], bounds[g + 1], _bucket_size(g // n_buckets), _bucket_size(g % n_buckets))
               for g in range(invalid) if bounds[g + 1] > bounds[g]]
    return order[:bounds[-1]], buckets


def _edge_and_depth_planes(table: Tensor, vid: list[Tensor], area: Tensor, vz: Tensor) -> None:
    """Rows 0:12 of ``table`` (edge functions, depth plane) from its corner rows 16:26 and ``area``."""
    cx, cy = table[16:19], table[19:22]
    orient = torch.sign(area)  # exactly +-1: |area| > 1e-12
    xr, yr = torch.empty_like(area).view(torch.int32), torch.empty_like(area).view(torch.int32)
    for i in range(3):
        # Edge opposite corner i, from corner j to k: E = a x + b y + c, c = -(a x_lo + b y_lo) with
        # (x_lo, y_lo) its lower-indexed vertex. a, b change sign exactly between the two triangles
        # sharing the edge (a - b == -(b - a) in floating point) and both use the same reference
        # vertex, so their E are exact negatives: a pixel centre on a shared edge is never missed by both.
        j, k = (i + 1) % 3, (i + 2) % 3
        a = torch.sub(cy[j], cy[k], out=table[3 * i]).mul_(orient)
        b = torch.sub(cx[k], cx[j], out=table[3 * i + 1]).mul_(orient)
        swap = (vid[j] > vid[k]).to(torch.int32).neg_()  # all bits set where vertex k is the lower one
        for ref, c in ((xr, cx), (yr, cy)):  # ref = c[k] if swap else c[j], bit for bit
            torch.bitwise_xor(c[k].view(torch.int32), c[j].view(torch.int32), out=ref)
            ref.bitwise_and_(swap).bitwise_xor_(c[j].view(torch.int32))
        torch.mul(a, xr.view(table.dtype), out=table[3 * i + 2]).add_(b * yr.view(table.dtype)).neg_()
    # depth plane z = p0 x + p1 y + p2 through the three corners
    z = [vz.index_select(0, v) for v in vid]
    dx1, dy1, dx2, dy2 = table[22:26]
    dz1, dz2 = z[1].sub_(z[0]), z[2].sub_(z[0])
    torch.mul(dz1, dy2, out=table[9]).sub_(dz2 * dy1).div_(area)
    torch.mul(dx1, dz2, out=table[10]).sub_(dx2 * dz1).div_(area)
    torch.mul(table[9], cx[0], out=table[11]).add_(table[10] * cy[0])
    torch.sub(z[0], table[11], out=table[11])


def _bucket_index(size: Tensor) -> Tensor:
    """Bounding-box side bucket of float ``size`` >= 1: ``size - 1`` up to 4 pixels, then
    ``ceil(log2(size)) + 1`` (the box is padded to the next power of two); see :func:`_bucket_size`."""
    return torch.minimum(size, torch.log2(size).ceil_().add_(2)).sub_(1)


def _bucket_size(index: int) -> int:
    """Largest box side of bucket ``index``."""
    return index + 1 if index < 4 else 2 ** (index - 1)


def visible_faces(pos: Tensor, tri: Tensor, height: int, width: int, chunk: int = 2**21,
                  cull_backfaces: bool = False) -> Tensor:
    """Nearest triangle per pixel (no gradient).

    Triangles are grouped by bounding-box size (exact up to 4 x 4 pixels, powers of two above), so each
    group is tested against one fixed block of candidate pixels by broadcasting, without per-pixel
    gathers. Blocks hold at most ``chunk`` candidates: groups are split over triangles and, for
    triangles larger than a block, over rows.

    Args:
        pos: [V, 4] clip-space positions.
        tri: [F, 3] int64 vertex indices.
        height, width: image size.
        chunk: candidate pixels per block.
        cull_backfaces: see :func:`rasterize`.

    Returns:
        [H * W] int64 triangle ids, -1 where no triangle covers the pixel centre.
    """
    ids, table, buckets = _screen_setup(pos, tri, height, width, cull_backfaces)
    zbuf = torch.full((height * width,), _EMPTY, dtype=torch.int64, device=pos.device)
    for start, end, kx, ky in buckets:
        rows = ky if kx * ky <= chunk else max(1, chunk // kx)
        dx = torch.arange(kx, device=pos.device, dtype=pos.dtype)[:, None]
        step = max(1, chunk // (kx * rows))
        for s in range(start, end, step):
            e = min(end, s + step)
            for r0 in range(0, ky, rows):
                dy = torch.arange(r0, min(ky, r0 + rows), device=pos.device, dtype=pos.dtype)[:, None]
                _depth_test(zbuf, table[:, s:e], ids[s:e], dx, dy, kx > 4, ky > 4, width)
    return torch.where(zbuf == _EMPTY, -1, zbuf & 0xFFFFFFFF)


def _depth_test(zbuf: Tensor, t: Tensor, ids: Tensor, dx: Tensor, dy: Tensor, clip_x: bool, clip_y: bool,
                width: int) -> None:
    """Inside and depth test of the pixel block ``dy x dx`` offset from the bounding-box corner of each
    triangle (columns ``t`` of the :func:`_screen_setup` table, triangle ids ``ids``); ``clip_x`` /
    ``clip_y``: the block can reach past the bounding box on that axis.

    Candidates are laid out (row offset, column offset, triangle) so that every elementwise kernel runs
    over a long contiguous triangle axis (a short innermost axis of 1-4 pixels makes CPU kernels several
    times slower). Products with x only depend on the column offset and those with y on the row, so
    they are computed on [columns, n] and [rows, n] and only the sums are per candidate; the sums are
    the same floating-point operations in the same order as ``a * x + b * y + c``.
    """
    n = t.shape[1]
    x = t[12] + dx  # [kx, n]
    y = t[14] + dy  # [ky, n]
    low = None
    for i in range(3):
        e = torch.add((t[3 * i + 1] * y)[:, None], (t[3 * i] * x)[None]).add_(t[3 * i + 2])  # [ky, kx, n]
        # the lowest of the three edge functions; NaN propagates and fails the test like >= 0 would
        low = e if low is None else torch.minimum(low, e, out=low)
    inside = low >= 0  # one comparison: they are several times slower than arithmetic on CPU
    del low, e
    if clip_y:
        inside &= (y <= t[15])[:, None]
    if clip_x:
        inside &= (x <= t[13])[None]
    z = torch.add((t[10] * y)[:, None], (t[9] * x)[None]).add_(t[11])  # [ky, kx, n]
    hit = inside.reshape(-1).nonzero().squeeze(1)
    zh = z.reshape(-1).index_select(0, hit)
    local = hit % n if hit.numel() and z.shape[0] * z.shape[1] > 1 else hit
    key = ((zh + 1) * (0.5 * _DEPTH_SCALE)).long() << 32 | ids.index_select(0, local)
    key = torch.where(zh.abs() <= 1, key, _EMPTY)  # z / w outside [-1, 1] is clipped (NaN too)
    pix = torch.add((y * width)[:, None], x[None]).reshape(-1).index_select(0, hit)
    zbuf.scatter_reduce_(0, pix.long(), key, reduce="amin")


def barycentrics(pos: Tensor, tri: Tensor, face: Tensor, height: int, width: int) -> Tensor:
    """Perspective-correct barycentrics of each pixel centre in its triangle (differentiable in ``pos``).

    Args:
        pos: [V, 4] clip-space positions.
        tri: [F, 3] int64 vertex indices.
        face: [H * W] triangle id per pixel, -1 for empty.
        height, width: image size.

    Returns:
        [H, W, 4]: u, v, z / w, face + 1.
    """
    pix = (face >= 0).nonzero().squeeze(1)
    f = face.index_select(0, pix)
    corners = [c.contiguous() for c in tri.index_select(0, f).unbind(1)]  # cheaper than .t().contiguous()
    v = [pos.index_select(0, corners[i]) for i in range(3)]  # 3 x [P, 4]
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
    """Clip-space positions [B, V, 4] of world vertices ``verts`` [V, 3] under ``mvp`` [B, 4, 4]."""
    verts_h = torch.nn.functional.pad(verts, (0, 1), value=1.0)
    return torch.einsum("vk,bjk->bvj", verts_h, mvp.to(verts))
