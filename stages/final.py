"""What ``final/`` holds besides the mesh files: the export config, the turntable video and the preview.

Both are renders of the result in the scene frame (z up, the reference camera on +x), unlit albedo
over white, by whatever render function the result has (:meth:`stages.textured_mesh.TexturedMesh.render`,
or vertex colours for :class:`stages.mesh_result.MeshResult`):

- ``turntable.mp4``: the 120 views of the evaluation protocol (:func:`stages.render.cameras.turntable`,
  azimuth 0, 3, ... 357 degrees, elevation 0, distance 3, fovy 20; view 0 is the reference camera),
  H.264 in yuv420p (what players open), ``turntable_fps`` frames a second.
- ``preview.png``: azimuth 0 (front: the reference view), 45 (three-quarter), 90 (the person's left
  side: scene +y is glTF +x, the left of a person facing +z) and 180 (back), side by side.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from stages.render.cameras import Cameras, orbit_cameras, turntable
from stages.render.export import atomic_path, atomic_write, png_bytes, to_uint8

FORMATS = ("glb", "obj", "turntable", "preview")
"""Names ``export.formats`` accepts, each a file (or files) in ``final/``."""
TURNTABLE_VIEWS = 120
"""Views of the turntable video: those of the evaluation protocol."""
PREVIEW_AZIMUTHS = (0.0, 45.0, 90.0, 180.0)
"""Azimuths of the preview's views, degrees: front, three-quarter, left side, back."""
RENDER_CHUNK = 8
"""Views rendered at once (bounds the memory of a 120-view turntable)."""

Render = Callable[[Cameras, int, int], dict[str, Tensor]]
"""``render(cameras, height, width) -> {"rgb": [B, H, W, 3], ...}``: unlit albedo over white."""


@dataclass
class ExportConfig:
    """What the final folder holds."""

    formats: list[str] = field(default_factory=lambda: list(FORMATS))
    """Files written to ``final/``: ``glb`` (avatar.glb, embedded texture), ``obj`` (avatar.obj + .mtl + texture
    .png), ``turntable`` (turntable.mp4, the 120 evaluation views) and ``preview`` (preview.png: front,
    three-quarter, side, back)."""
    turntable_resolution: int = field(default=512, metadata={"min": 16, "max": 4096})
    """Side of the turntable video's square frames, pixels (even: H.264 in yuv420p needs it)."""
    turntable_fps: int = field(default=30, metadata={"min": 1, "max": 120})
    """Frames per second of the turntable video (120 frames: 4 s at 30)."""
    preview_resolution: int = field(default=512, metadata={"min": 16, "max": 4096})
    """Side of each of the preview's four square views, pixels."""


def check_formats(formats: Sequence[str]) -> None:
    """Raise ``ValueError`` (one line) on an empty list or a name not in :data:`FORMATS`."""
    if not formats:
        raise ValueError(f"no export formats given; choose from {', '.join(FORMATS)}")
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown export format {bad[0]!r}; choose from {', '.join(FORMATS)}")


def turntable_frames(render: Render, size: int, n_views: int = TURNTABLE_VIEWS,
                     chunk: int = RENDER_CHUNK) -> Iterator[np.ndarray]:
    """The turntable's frames, uint8 ``[size, size, 3]`` each, rendered ``chunk`` views at a time."""
    cams = turntable(n_views)
    for start in range(0, n_views, chunk):
        with torch.no_grad():
            rgb = render(cams[start:start + chunk], size, size)["rgb"]
        yield from to_uint8(rgb)


def preview_image(render: Render, size: int) -> np.ndarray:
    """uint8 ``[size, 4 size, 3]``: the :data:`PREVIEW_AZIMUTHS` views side by side, white background."""
    n = len(PREVIEW_AZIMUTHS)
    cams = orbit_cameras(torch.zeros(n), torch.tensor(PREVIEW_AZIMUTHS), torch.full((n,), 3.0), torch.full((n,), 20.0))
    with torch.no_grad():
        rgb = render(cams, size, size)["rgb"]  # [4, S, S, 3]
    return np.concatenate(list(to_uint8(rgb)), axis=1)


def write_video(path: Path, frames: Iterator[np.ndarray], size: int, fps: int) -> Path:
    """Write ``frames`` (uint8 ``[size, size, 3]``) as H.264 / yuv420p MP4 through imageio-ffmpeg, under a
    temporary name that is renamed to ``path`` only when ffmpeg has finished."""
    import imageio_ffmpeg  # ffmpeg's binary ships in the wheel; imported here: only the video needs it

    if size % 2:
        raise ValueError(f"turntable size {size} is odd; H.264 in yuv420p needs an even size")
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(str(tmp), (size, size), fps=fps, codec="libx264",
                                             pix_fmt_in="rgb24", pix_fmt_out="yuv420p", quality=8,
                                             macro_block_size=2, ffmpeg_log_level="error")
        writer.send(None)  # start ffmpeg
        try:
            for frame in frames:
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()
    return path


def write_views(folder: Path, formats: Sequence[str], render: Render, cfg: ExportConfig) -> list[Path]:
    """``turntable.mp4`` and / or ``preview.png`` in ``folder``, as ``formats`` names them."""
    paths = []
    if "turntable" in formats:
        size = cfg.turntable_resolution
        paths.append(write_video(folder / "turntable.mp4", turntable_frames(render, size), size, cfg.turntable_fps))
    if "preview" in formats:
        paths.append(atomic_write(folder / "preview.png", png_bytes(preview_image(render, cfg.preview_resolution))))
    return paths
