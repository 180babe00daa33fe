"""The one adapter between the renderers' image layout and the priors'.

Renderers (:mod:`stages.render.volume`, :mod:`stages.render.mesh_render`,
:mod:`stages.render.rasterize`, :mod:`stages.render.interpolate`, :mod:`stages.render.uv`)
return images channels last, ``[B, H, W, C]``; the priors (``priors.*``) take and return images
channels first, ``[B, C, H, W]`` (diffusers' layout). A stage converts between them only here.
"""
from __future__ import annotations

from torch import Tensor


def to_channels_first(x: Tensor) -> Tensor:
    """Renderer images [B, H, W, C] -> prior images [B, C, H, W] (a view, no copy).

    Example:
        >>> import torch
        >>> to_channels_first(torch.zeros(2, 64, 48, 3)).shape
        torch.Size([2, 3, 64, 48])
    """
    assert x.ndim == 4, f"expected [B, H, W, C], got shape {list(x.shape)}"
    return x.permute(0, 3, 1, 2)


def to_channels_last(x: Tensor) -> Tensor:
    """Prior images [B, C, H, W] -> renderer images [B, H, W, C] (a view, no copy); the inverse of
    :func:`to_channels_first`.

    Example:
        >>> import torch
        >>> x = torch.rand(2, 5, 4, 3)
        >>> to_channels_last(torch.zeros(2, 3, 64, 48)).shape, torch.equal(to_channels_last(to_channels_first(x)), x)
        (torch.Size([2, 64, 48, 3]), True)
    """
    assert x.ndim == 4, f"expected [B, C, H, W], got shape {list(x.shape)}"
    return x.permute(0, 2, 3, 1)
