"""What the two texture stages share: the fixed mesh on the device, the reference-view RGB target
(the photo inside its eroded mask) and the reference RGB losses.

Images are ``[B, H, W, C]`` (the renderers' layout); masks ``[B, H, W, 1]`` in [0, 1].
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from stages import losses as L
from stages.inputs import Inputs, reference_maps
from stages.loop import active
from stages.render.antialias import Topology, build_topology

log = logging.getLogger("geneman")


@dataclass
class Surface:
    """The mesh the texture stages colour (fixed: no gradient reaches it)."""

    verts: Tensor
    faces: Tensor
    topology: Topology

    @classmethod
    def of(cls, previous, device: torch.device, faces: Tensor | None = None) -> "Surface":
        """The previous stage's mesh (``verts`` [V, 3], ``faces`` [F, 3]) on ``device``; ``faces``: the same
        triangles in another order (a UV atlas' order, so that one face id indexes both)."""
        require_faces(previous)
        faces = (previous.faces if faces is None else faces).long().to(device)
        return cls(previous.verts.detach().float().to(device), faces, build_topology(faces))

    def box(self, margin: float = 1.05) -> float:
        """Half side of the origin-centred cube holding the mesh, with a margin (the texture field's box)."""
        return float(self.verts.abs().max()) * margin


def require_faces(previous) -> None:
    """Fail in one line on a mesh without faces (nothing to texture)."""
    if previous.faces.shape[0] == 0:
        raise RuntimeError("the mesh to texture has no faces (the geometry stages left no surface)")


def erode(mask: Tensor, px: int) -> Tensor:
    """Binary erosion of ``mask`` ``[B, H, W, 1]`` (thresholded at 0.5) by ``px`` pixels (square element).

    Example:
        >>> m = torch.zeros(1, 5, 5, 1); m[0, 1:4, 1:4] = 1
        >>> erode(m, 1)[0, ..., 0].sum().item(), erode(m, 0)[0, ..., 0].sum().item()
        (1.0, 9.0)
    """
    binary = (mask > 0.5).float()
    if px <= 0:
        return binary
    x = binary.permute(0, 3, 1, 2)
    kept = -F.max_pool2d(-x, 2 * px + 1, stride=1, padding=px)
    return kept.permute(0, 2, 3, 1)


@dataclass
class ReferenceRGB:
    """The photo at the render size and the eroded mask the reference loss is taken in."""

    rgb: Tensor
    mask: Tensor

    @classmethod
    def at(cls, inputs: Inputs, res: int, erode_px: int, device: torch.device) -> "ReferenceRGB":
        """The preprocess photo at ``res`` x ``res``, its mask eroded by ``erode_px`` pixels."""
        m = reference_maps(inputs, res, device)
        for px in range(erode_px, -1, -1):  # a thin person at a small size: erode less, and say so
            mask = erode(m["mask"], px)
            if mask.sum() > 0:
                break
        if px != erode_px:
            log.warning("texture stages: eroding the photo's mask by %d px at %d px leaves nothing; eroded by %d px",
                        erode_px, res, px)
        return cls(m["rgb"], mask)


def reference_rgb_losses(rgb: Tensor, ref: ReferenceRGB, w: dict[str, float]) -> dict[str, Tensor]:
    """``rgb`` (L1, the release's form) and ``rgb_mse`` (the paper's) of the render against the photo,
    inside the eroded mask; each only when weighted now."""
    losses = {}
    if active(w, "rgb"):
        losses["rgb"] = L.masked_mean((rgb - ref.rgb).abs(), ref.mask)
    if active(w, "rgb_mse"):
        losses["rgb_mse"] = L.masked_mean((rgb - ref.rgb) ** 2, ref.mask)
    return losses
