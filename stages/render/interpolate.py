"""Differentiable attribute interpolation over a rasterised image (nvdiffrast ``interpolate`` layout)."""
from __future__ import annotations

import torch
from torch import Tensor

from stages.render.rasterize import _nvdiffrast, use_nvdiffrast


def interpolate(attr: Tensor, rast: Tensor, tri: Tensor, backend: str = "auto") -> Tensor:
    """Interpolate vertex attributes at every pixel with the barycentrics of ``rast``.

    Gradients flow to ``attr`` and, through u and v, to the vertex positions that made ``rast``.

    Args:
        attr: [V, C] attributes shared by the batch, or [B, V, C] per image.
        rast: [B, H, W, 4] from :func:`stages.render.rasterize.rasterize`.
        tri: [F, 3] vertex indices.
        backend: ``auto`` / ``torch`` / ``nvdiffrast`` (see :func:`.rasterize.use_nvdiffrast`).

    Returns:
        [B, H, W, C]: ``u * a0 + v * a1 + (1 - u - v) * a2``, zeros on empty pixels.

    Example:
        >>> rast = torch.tensor([[[[0.2, 0.3, 0.0, 1.0]]]])
        >>> round(interpolate(torch.tensor([[1.0], [2.0], [4.0]]), rast, torch.tensor([[0, 1, 2]])).item(), 4)
        2.8
    """
    assert rast.dim() == 4 and rast.shape[-1] == 4, rast.shape
    b, h, w, _ = rast.shape
    if use_nvdiffrast(rast, backend):
        out, _ = _nvdiffrast().interpolate(attr.contiguous().float(), rast.contiguous(), tri.int().contiguous())
        return out
    tri = tri.long()
    flat = rast.reshape(-1, 4)
    pix = (flat[:, 3] > 0).nonzero().squeeze(1)
    sel = flat.index_select(0, pix)  # [P, 4]
    vidx = tri.index_select(0, sel[:, 3].long() - 1)  # [P, 3]
    if attr.dim() == 3:
        assert attr.shape[0] == b, (attr.shape, rast.shape)
        vidx = vidx + (torch.div(pix, h * w, rounding_mode="floor") * attr.shape[1])[:, None]
        attr = attr.reshape(-1, attr.shape[-1])
    a = attr.index_select(0, vidx.reshape(-1)).reshape(-1, 3, attr.shape[-1])  # [P, 3, C]
    u, v = sel[:, 0:1], sel[:, 1:2]
    vals = u * a[:, 0] + v * a[:, 1] + (1 - u - v) * a[:, 2]
    out = torch.zeros(b * h * w, attr.shape[-1], dtype=vals.dtype, device=vals.device).index_copy(0, pix, vals)
    return out.reshape(b, h, w, -1)


def face_attribute(values: Tensor, rast: Tensor) -> Tensor:
    """Per-face values [F, C] spread over the pixels of each face: [B, H, W, C], zeros on empty pixels."""
    face = rast[..., 3].long() - 1
    out = values[face.clamp(min=0)]
    return out * (face >= 0)[..., None].to(out.dtype)
