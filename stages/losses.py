"""Loss functions of the geometry stages, each a small pure function with shapes in its docstring.

Images are ``[B, H, W, C]`` (the renderers' layout); masks ``[B, H, W, 1]`` in [0, 1].
"""
from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean of ``x`` ``[B, H, W, C]`` over pixels where ``mask`` ``[B, H, W, 1]`` is set (weighted).

    Example:
        >>> x = torch.tensor([1.0, 3.0]).reshape(1, 1, 2, 1)
        >>> float(masked_mean(x, torch.tensor([1.0, 0.0]).reshape(1, 1, 2, 1)))
        1.0
    """
    w = mask.expand_as(x)
    return (x * w).sum() / w.sum().clamp_min(eps)


def least_squares_fit(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Scale and shift ``(s, b)`` minimising ``sum (s * pred + b - target)^2`` over ``[N]`` values,
    solved in closed form and detached (the release's ``ls_mse`` aligns the render to the map).

    Example:
        >>> s, b = least_squares_fit(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 3.0, 5.0]))
        >>> round(float(s), 4), round(float(b), 4)
        (2.0, 1.0)
    """
    p, t = pred.detach().double(), target.detach().double()
    pm, tm = p.mean(), t.mean()
    var = ((p - pm) ** 2).sum().clamp_min(1e-12)
    s = ((p - pm) * (t - tm)).sum() / var
    return s.to(pred.dtype), (tm - s * pm).to(pred.dtype)


def depth_ls_mse(depth: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """MSE between ``target`` and the render's ``depth`` after a least-squares scale/shift, inside
    ``mask`` (all ``[B, H, W, 1]``; the target's convention, 1 = near, is absorbed by the fit)."""
    inside = mask[..., 0] > 0.5
    d, t = depth[..., 0][inside], target[..., 0][inside]
    if d.numel() < 2:
        return depth.sum() * 0
    s, b = least_squares_fit(d, t)
    return ((s * d + b - t) ** 2).mean()


def depth_pearson(depth: Tensor, target: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``1 - corr(-depth, target)`` inside ``mask``: the paper's negative Pearson depth loss, with the
    render's distance negated because the target is brighter when nearer (0 when perfectly aligned)."""
    inside = mask[..., 0] > 0.5
    d, t = -depth[..., 0][inside], target[..., 0][inside]
    if d.numel() < 2:
        return depth.sum() * 0
    d, t = d - d.mean(), t - t.mean()
    corr = (d * t).sum() / (d.norm() * t.norm()).clamp_min(eps)
    return 1 - corr


def normal_cosine(normal: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean ``1 - cos`` between unit normals ``[B, H, W, 3]`` inside ``mask`` (the release's form)."""
    cos = (torch.nn.functional.normalize(normal, dim=-1) * target).sum(-1, keepdim=True)
    return masked_mean(1 - cos, mask)


def normal_mse(normal: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error of normals ``[B, H, W, 3]`` inside ``mask`` (per channel; the paper's form)."""
    return masked_mean((normal - target) ** 2, mask)


def to_camera(vectors: Tensor, c2w: Tensor) -> Tensor:
    """World directions ``[B, H, W, 3]`` into each camera's frame (OpenGL: x right, y up, z back)."""
    return torch.einsum("bhwj,bjk->bhwk", vectors, c2w[:, :3, :3])


def normal_smoothness_2d(normal: Tensor, mask: Tensor) -> Tensor:
    """Mean squared difference of neighbouring pixels of a normal map ``[B, H, W, 3]`` where both
    pixels lie inside ``mask`` (the release's 2D normal smoothness)."""
    dx = (normal[:, :, 1:] - normal[:, :, :-1]) ** 2
    dy = (normal[:, 1:] - normal[:, :-1]) ** 2
    mx = mask[:, :, 1:] * mask[:, :, :-1]
    my = mask[:, 1:] * mask[:, :-1]
    return masked_mean(dx, mx) + masked_mean(dy, my)


def normal_smoothness_3d(normals: Tensor, normals_perturbed: Tensor) -> Tensor:
    """Mean squared difference ``[N, 3]`` between normals at points and at slightly moved points."""
    return ((normals - normals_perturbed) ** 2).sum(-1).mean()


def orientation(weights: Tensor, normals: Tensor, dirs: Tensor) -> Tensor:
    """Ref-NeRF's orientation loss: ``sum_i w_i max(0, n_i . d)^2`` per ray, averaged over rays.

    Args:
        weights: ``[N]`` compositing weights of the evaluated samples.
        normals: ``[N, 3]`` their unit normals.
        dirs: ``[N, 3]`` the view directions of their rays.
        (Summed over the ``N`` samples and divided by ``N``, which is proportional to the per-ray mean.)
    """
    facing = (normals * dirs).sum(-1).clamp_min(0) ** 2
    return (weights.detach() * facing).sum() / max(weights.shape[0], 1)


def sparsity(opacity: Tensor) -> Tensor:
    """The release's sparsity, ``mean(sqrt(opacity^2 + 0.01))`` over ``[B, H, W, 1]``: a smooth L1 that pushes
    empty space to stay empty (the stages apply it on guidance views only, never against the photo)."""
    return (opacity.square() + 0.01).sqrt().mean()


def mask_sum(opacity: Tensor, mask: Tensor) -> Tensor:
    """The release's silhouette term: squared error of ``opacity`` against ``mask`` (``[B, H, W, 1]``)
    summed over the pixels and averaged over the batch.

    A sum, not a mean: its weight is per pixel, so the silhouette's pull grows with the render's resolution
    as the release's does (at 128 px the release's 0.05 weighs as 819 times a per-pixel mean, on a par
    with its RGB term of 1000); a mean at that weight does nothing against the guidance.
    """
    return (opacity - mask).square().sum() / opacity.shape[0]


def opaque(opacity: Tensor, eps: float = 1e-3) -> Tensor:
    """Binary cross-entropy of opacity with itself: pushes each pixel to 0 or 1."""
    a = opacity.clamp(eps, 1 - eps)
    return (-(a * torch.log(a) + (1 - a) * torch.log(1 - a))).mean()


def normal_consistency(verts: Tensor, faces: Tensor, edge_faces: Tensor) -> Tensor:
    """Mean ``1 - cos`` between the normals of the two faces of every interior edge.

    Args:
        verts: ``[V, 3]``; faces: ``[F, 3]``; edge_faces: ``[E, 2]`` face ids per edge (-1: border).
    """
    v = verts[faces]
    n = torch.nn.functional.normalize(torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1), dim=-1)
    inner = edge_faces[:, 1] >= 0
    f0, f1 = edge_faces[inner, 0], edge_faces[inner, 1]
    if f0.numel() == 0:
        return verts.sum() * 0
    return (1 - (n[f0] * n[f1]).sum(-1)).mean()


def laplacian(verts: Tensor, edges: Tensor) -> Tensor:
    """Uniform Laplacian smoothness: mean squared distance ``[V, 3]`` of each vertex from the mean of
    its neighbours over the undirected ``edges`` ``[E, 2]``."""
    n = verts.shape[0]
    both = torch.cat([edges, edges.flip(1)])
    acc = torch.zeros_like(verts).index_add(0, both[:, 0], verts[both[:, 1]])
    deg = torch.zeros(n, dtype=verts.dtype, device=verts.device).index_add(
        0, both[:, 0], torch.ones(both.shape[0], dtype=verts.dtype, device=verts.device))
    has = deg > 0
    lap = verts[has] - acc[has] / deg[has, None]
    return (lap ** 2).sum(-1).mean() if has.any() else verts.sum() * 0


def mesh_edges(faces: Tensor) -> Tensor:
    """Undirected edges ``[E, 2]`` (each once, smaller id first) of triangles ``[F, 3]``.

    Example:
        >>> mesh_edges(torch.tensor([[0, 1, 2], [0, 2, 3]])).tolist()
        [[0, 1], [0, 2], [0, 3], [1, 2], [2, 3]]
    """
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values.long()
    if e.shape[0] == 0:
        return e
    n = int(e.max()) + 1
    key = torch.unique(e[:, 0] * n + e[:, 1])  # 1-D: unique(dim=0) costs ~0.5 s a step on a 60k-face mesh
    return torch.stack([key // n, key % n], dim=1)
