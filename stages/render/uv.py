"""UV unwrapping (xatlas in a subprocess with a timeout, fallback atlas), UV-space rasterisation,
bilinear texture sampling and seam padding.

UV convention (OBJ / glTF through trimesh): ``v`` points up, so texel row 0 is ``v = 1``.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from stages.render.rasterize import rasterize

_DIE_WITH_PARENT = """
import os, sys, threading, time
def _watch(parent):  # where prctl is missing: poll, and end when the parent is gone
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: die with the parent (Linux)
except (OSError, AttributeError):
    threading.Thread(target=_watch, args=(int(sys.argv[3]),), daemon=True).start()
if os.getppid() != int(sys.argv[3]):  # the parent died before prctl took effect
    os._exit(1)
"""
"""The xatlas child's first lines: it is killed when its parent dies (a SIGKILLed run leaves no xatlas behind)."""

_XATLAS_SCRIPT = """
import sys, numpy as np, xatlas
data = np.load(sys.argv[1])
vmapping, indices, uvs = xatlas.parametrize(data["verts"], data["faces"])
np.savez(sys.argv[2], vmapping=vmapping.astype(np.int64), faces=indices.astype(np.int64), uvs=uvs)
"""


@dataclass
class UVMesh:
    """A mesh split along UV seams.

    Attributes:
        verts: (V', 3) vertices (original vertices duplicated along seams).
        faces: [F, 3] triangles over ``verts`` and ``uvs``.
        uvs: (V', 2) texture coordinates in [0, 1].
        vmapping: (V',) index of each vertex in the original mesh.
        method: ``xatlas`` or ``fallback``.
        note: why the fallback was used after xatlas was tried (crash, timeout, error); empty otherwise.
    """

    verts: Tensor
    faces: Tensor
    uvs: Tensor
    vmapping: Tensor
    method: str
    note: str = ""


def unwrap_uv(verts: Tensor, faces: Tensor, timeout: float = 120.0, use_xatlas: bool = True) -> UVMesh:
    """UV-unwrap a mesh with xatlas, falling back to :func:`fallback_uv` if xatlas crashes, times out
    or is disabled. xatlas runs in a child process: a segfault or a hang cannot take this one down.

    Args:
        verts: [V, 3] vertices.
        faces: [F, 3] triangles.
        timeout: seconds xatlas may take.
        use_xatlas: False skips straight to the fallback.
    """
    if not use_xatlas:
        return fallback_uv(verts, faces)
    result, why = _xatlas_subprocess(verts.detach().float().cpu().numpy(), faces.cpu().numpy(), timeout)
    if result is None:
        out = fallback_uv(verts, faces)
        out.note = why
        return out
    vmap, new_faces, uvs = result
    vmap_t = torch.from_numpy(vmap).to(faces.device)
    return UVMesh(verts[vmap_t], torch.from_numpy(new_faces).to(faces.device),
                  torch.from_numpy(uvs).float().to(verts.device), vmap_t, "xatlas")


def _xatlas_subprocess(verts: np.ndarray, faces: np.ndarray, timeout: float):
    """``((vmapping, faces, uvs), "")`` from xatlas in a child process, or ``(None, why)`` on a crash, a
    timeout or an error."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(src, verts=verts.astype(np.float32), faces=faces.astype(np.uint32))
        try:
            proc = subprocess.run([sys.executable, "-c", _DIE_WITH_PARENT + _XATLAS_SCRIPT, src, dst, str(os.getpid())],
                                  timeout=timeout, capture_output=True)
        except subprocess.TimeoutExpired:
            return None, f"xatlas timed out after {timeout:g} s"
        if proc.returncode < 0:
            return None, f"xatlas crashed (signal {-proc.returncode})"
        if proc.returncode != 0 or not os.path.exists(dst):
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            return None, f"xatlas failed (exit {proc.returncode}: {tail[0][:200]})"
        out = np.load(dst)
        return (out["vmapping"], out["faces"], out["uvs"]), ""


def fallback_uv(verts: Tensor, faces: Tensor, gutter: float = 0.2) -> UVMesh:
    """A parameterisation that always works: every triangle gets its own half of a square cell.

    Cells form a ``ceil(sqrt(F / 2))`` grid; each holds two right triangles (lower-left and upper-right
    halves), shrunk by ``gutter`` of a cell so that bilinear lookups do not bleed between triangles.
    Texel use is poor and triangles are distorted, but there is no overlap. Every face gets 3 new vertices.

    Example:
        >>> m = fallback_uv(torch.rand(3, 3), torch.tensor([[0, 1, 2]]))
        >>> m.uvs.shape, m.vmapping.tolist()
        (torch.Size([3, 2]), [0, 1, 2])
    """
    n = faces.shape[0]
    side = max(1, math.ceil(math.sqrt(n / 2)))
    cell = 1.0 / side
    f = torch.arange(n, device=faces.device)
    slot, upper = torch.div(f, 2, rounding_mode="floor"), (f % 2).bool()
    cx, cy = (slot % side).float() * cell, torch.div(slot, side, rounding_mode="floor").float() * cell
    g = gutter * cell / 2
    lo, hi = g, cell - g
    lower_tri = torch.tensor([[lo, lo], [hi - g, lo], [lo, hi - g]])
    upper_tri = torch.tensor([[hi, hi], [lo + g, hi], [hi, lo + g]])
    local = torch.where(upper[:, None, None], upper_tri, lower_tri)  # [F, 3, 2]
    uvs = (local + torch.stack([cx, cy], dim=-1)[:, None]).reshape(-1, 2).to(verts.device)
    vmap = faces.reshape(-1).long()
    new_faces = torch.arange(3 * n, device=faces.device).reshape(n, 3)
    return UVMesh(verts[vmap], new_faces, uvs, vmap, "fallback")


def uv_to_clip(uvs: Tensor) -> Tensor:
    """Clip positions [V, 4] that rasterise UV space into a texture image with row 0 at ``v = 1``."""
    return torch.stack([uvs[:, 0] * 2 - 1, 1 - uvs[:, 1] * 2, torch.zeros_like(uvs[:, 0]),
                        torch.ones_like(uvs[:, 0])], dim=-1)


def rasterize_uv(uvs: Tensor, faces: Tensor, size: int) -> Tensor:
    """Rasterise triangles in UV space: rast [1, size, size, 4] for texture baking with
    :func:`stages.render.interpolate.interpolate` (e.g. world positions per texel)."""
    return rasterize(uv_to_clip(uvs), faces, (size, size), backend="torch")


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear texture lookup, differentiable in the texture and the UVs.

    Args:
        texture: [H, W, C] or [B, H, W, C], row 0 at ``v = 1``.
        uv: [B, ..., 2] or [..., 2] coordinates in [0, 1] (edges clamp).

    Returns:
        [B, ..., C] or [..., C] sampled values.
    """
    batched = texture.dim() == 4
    tex = texture if batched else texture[None]
    grid = uv if batched else uv[None]
    shape = grid.shape[:-1]
    grid = grid.reshape(tex.shape[0], 1, -1, 2)
    grid = torch.stack([grid[..., 0] * 2 - 1, 1 - grid[..., 1] * 2], dim=-1)
    out = torch.nn.functional.grid_sample(tex.permute(0, 3, 1, 2), grid.to(tex.dtype), mode="bilinear",
                                          padding_mode="border", align_corners=False)
    out = out[:, :, 0].permute(0, 2, 1).reshape(*shape, tex.shape[-1])
    return out if batched else out[0]


def pad_texture(texture: Tensor, mask: Tensor, iterations: int = 16) -> Tensor:
    """Grow texels across UV seams: each round, empty texels take the mean of their filled 3x3 neighbours.

    Args:
        texture: [H, W, C] texture.
        mask: [H, W] bool, True where the texture holds baked values.
        iterations: rounds of growth (pixels of padding).

    Returns:
        [H, W, C] texture; texels still empty after all rounds take the mean filled colour.
    """
    tex = texture.permute(2, 0, 1)[None] * mask[None, None].to(texture.dtype)
    m = mask[None, None].to(texture.dtype)
    kernel = torch.ones(1, 1, 3, 3, dtype=texture.dtype, device=texture.device)
    for _ in range(iterations):
        count = torch.nn.functional.conv2d(m, kernel, padding=1)
        total = torch.nn.functional.conv2d(tex.reshape(-1, 1, *tex.shape[2:]), kernel, padding=1).reshape(tex.shape)
        grow = (count > 0) & (m == 0)
        tex = torch.where(grow, total / count.clamp(min=1), tex)
        m = torch.where(grow, torch.ones_like(m), m)
    filled = m[0, 0] > 0
    if not bool(filled.all()) and bool(filled.any()):
        mean = tex[0][:, filled].mean(1)
        tex = torch.where(filled[None, None], tex, mean[None, :, None, None])
    return tex[0].permute(1, 2, 0)
