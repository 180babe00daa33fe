"""Preview strips: a row of rendered views written to a stage folder's ``previews/`` as PNG."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from stages.common import OrbitCameraConfig
from stages.render.cameras import Cameras, orbit_cameras


def strip(images: Tensor) -> np.ndarray:
    """``[N, H, W, C]`` images in [0, 1] (C = 1 or 3) side by side: ``[H, N W, 3]`` uint8.

    Example:
        >>> import torch
        >>> strip(torch.ones(4, 2, 3, 3)).shape
        (2, 12, 3)
    """
    x = images.detach().float().clamp(0, 1).cpu()
    if x.shape[-1] == 1:
        x = x.expand(*x.shape[:-1], 3)
    row = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1, 3)
    return (row.numpy() * 255 + 0.5).astype(np.uint8)


def write(ckpt, step: int, images: Tensor) -> Path:
    """Write ``previews/step_XXXXXXXX.png`` beside the stage's ``ckpt/`` folder (temp file, then rename)."""
    folder = Path(ckpt.folder).parent / "previews"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:08d}.png"
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(strip(images)).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def preview_cameras(c: OrbitCameraConfig) -> Cameras:
    """The reference camera and three novel views (azimuth +90, +180, +270) of a preview strip."""
    ones = torch.ones(4)
    return orbit_cameras(ones * c.ref_elevation, torch.tensor([0.0, 90.0, 180.0, 270.0]) + c.ref_azimuth,
                         ones * c.ref_distance, ones * c.ref_fovy)
