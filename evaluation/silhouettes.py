"""Silhouette IoU of a reconstruction: against the truth on the evaluation turntable (does the shape have the
person's outline from every side?) and against the photo's mask from the reference camera (did what the photo
shows survive?).

Masks are rendered at :data:`SIZE` pixels a side and thresholded at 0.5; an IoU of two empty masks is 1.
"""
from __future__ import annotations

import torch
from torch import Tensor

from stages.render.cameras import Cameras, turntable
from stages.render.mesh_render import render_mesh

SIZE = 128
"""Pixels a side of the turntable masks."""
BATCH = 8
"""Views rendered at once."""


def iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU per image of two ``[B, H, W]`` masks in [0, 1] (thresholded at 0.5).

    Example:
        >>> a = torch.zeros(1, 4, 4); a[0, :2] = 1
        >>> b = torch.zeros(1, 4, 4); b[0, :, :2] = 1
        >>> iou(a, b).tolist()
        [0.3333333432674408]
    """
    a, b = a > 0.5, b > 0.5
    inter, union = (a & b).flatten(1).sum(1).float(), (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def masks(render, cams: Cameras, size: int) -> Tensor:
    """``[N, size, size]`` masks of ``render(cams, h, w)["mask"]`` over the cameras, :data:`BATCH` at a time."""
    out = []
    with torch.no_grad():
        for i in range(0, len(cams), BATCH):
            out.append(render(cams[i:i + BATCH], size, size)["mask"].reshape(-1, size, size).float())
    return torch.cat(out)


def front_back(n_views: int) -> tuple[list[int], list[int]]:
    """Turntable views within 90 degrees of the reference camera, and the others (as the appearance figures)."""
    front = [i for i in range(n_views) if min(i, n_views - i) * 360.0 / n_views < 90.0]
    return front, [i for i in range(n_views) if i not in front]


def turntable_iou(verts: Tensor, faces: Tensor, truth: Tensor) -> dict[str, float]:
    """``iou`` (mean over the views), ``iou_back`` (the back half's mean) and ``iou_min`` of the mesh's
    silhouettes against ``truth``, the truth's ``[N, S, S]`` turntable masks (:func:`truth_masks`)."""
    n, size = truth.shape[0], truth.shape[-1]
    ours = masks(lambda c, h, w: render_mesh(verts.float(), faces.long(), c, h, w), turntable(n), size)
    per_view = iou(ours, truth)
    _, back = front_back(n)
    return {"iou": float(per_view.mean()), "iou_back": float(per_view[back].mean()), "iou_min": float(per_view.min())}


def truth_masks(renderer, n_views: int = 120, size: int = SIZE) -> Tensor:
    """The subject's ``[n_views, size, size]`` masks on the evaluation turntable (``SubjectRenderer``)."""
    return masks(renderer, turntable(n_views), size)


def reference_iou(verts: Tensor, faces: Tensor, photo_mask: Tensor, camera: Cameras) -> float:
    """IoU of the mesh's silhouette from the reference ``camera`` against the photo's ``[H, W]`` mask."""
    h, w = photo_mask.shape
    with torch.no_grad():
        ours = render_mesh(verts.float(), faces.long(), camera, h, w)["mask"].reshape(1, h, w)
    return float(iou(ours, photo_mask[None].float())[0])
