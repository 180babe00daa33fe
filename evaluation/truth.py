"""Ground-truth renders of a subject with the project's own rasteriser, and the reference inputs
that preprocess would have made from a photo of it.

Conventions (those of ``stages.render``, checked in tests/evaluation/test_truth.py):

- Scene frame: z up, the reference camera (azimuth 0) on +x looking at the origin along -x.
  :class:`evaluation.framing.Framing` maps a subject's glTF frame (+y up, facing +z) into it.
- ``depth``: distance from the camera centre along each pixel's ray (not the z of camera space),
  as :func:`stages.render.mesh_render.render_mesh` and :func:`stages.render.volume.render_image`
  (expected ray distance ``t``, the rays of unit direction) call depth; 0 on background.
- ``normal``: unit camera-space normals, OpenGL axes: x right, y up, z towards the camera (a surface
  facing the camera has z > 0); ``render_mesh`` gives world normals, rotated here by the camera's
  ``c2w`` rotation (``n_cam = R^T n_world``).
- Images ``[B, H, W, C]``, top row first.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from evaluation.meshes import as_subject_mesh
from stages.inputs import Inputs
from stages.render.antialias import antialias, build_topology
from stages.render.cameras import Cameras, reference_camera
from stages.render.mesh_render import render_mesh
from stages.render.rasterize import transform_to_clip
from stages.render.uv import sample_texture


def world_to_camera_normals(normal: Tensor, cameras: Cameras) -> Tensor:
    """Rotate world normals ``[B, H, W, 3]`` into each camera's space (x right, y up, z back).

    Example:
        >>> cams = reference_camera()  # on +x looking at the origin
        >>> n = torch.tensor([1.0, 0, 0]).expand(1, 1, 1, 3)  # facing the camera
        >>> world_to_camera_normals(n, cams).flatten().round(decimals=6).tolist()
        [0.0, 0.0, 1.0]
    """
    rot = cameras.c2w[:, :3, :3].to(normal)
    return torch.einsum("bhwj,bjk->bhwk", normal, rot)


def render_truth(subject, cameras: Cameras, height: int, width: int, framing=None,
                 backend: str = "auto") -> dict[str, Tensor]:
    """Render a subject's unlit albedo, coverage, depth and normals.

    Args:
        subject: a :class:`evaluation.meshes.SubjectMesh`, a Trimesh or a mesh file.
        cameras: B cameras in the scene frame.
        height, width: image size.
        framing: :class:`evaluation.framing.Framing` placing the subject in the scene; None: the
            vertices are already in the scene frame.
        backend: rasteriser backend (see :func:`stages.render.rasterize.rasterize`).

    Returns:
        ``rgb`` ``[B, H, W, 3]`` albedo over a white background (antialiased), ``mask``
        ``[B, H, W, 1]`` antialiased coverage, ``depth`` ``[B, H, W, 1]`` ray distance (0 on
        background), ``normal`` ``[B, H, W, 3]`` unit camera-space normals (0 on background;
        antialiased, so shorter than 1 on silhouette pixels).
    """
    return SubjectRenderer(subject, framing, backend)(cameras, height, width)


class SubjectRenderer:
    """:func:`render_truth` for one subject and framing, its mesh and topology prepared once (the
    oracle guidance renders the truth at every step).

    Args:
        subject: a :class:`evaluation.meshes.SubjectMesh`, a Trimesh or a mesh file.
        framing: :class:`evaluation.framing.Framing`, or None when the vertices are in the scene frame.
        backend: rasteriser backend.
    """

    def __init__(self, subject, framing=None, backend: str = "auto"):
        self.mesh = mesh = as_subject_mesh(subject)
        v = mesh.vertices if framing is None else framing.to_scene(mesh.vertices)
        self.verts = torch.as_tensor(v, dtype=torch.float32)
        self.faces = torch.as_tensor(mesh.faces, dtype=torch.long)
        self.topo = build_topology(self.faces)
        self.attrs = torch.as_tensor(mesh.colors if mesh.texture is None else mesh.uvs, dtype=torch.float32)
        self.texture = None if mesh.texture is None else torch.as_tensor(mesh.texture)
        self.backend = backend

    @torch.no_grad()
    def __call__(self, cameras: Cameras, height: int, width: int) -> dict[str, Tensor]:
        """The maps of :func:`render_truth` from ``cameras`` (moved to the CPU to render)."""
        cameras = cameras.to("cpu")
        verts, faces, topo, backend = self.verts, self.faces, self.topo, self.backend
        out = render_mesh(verts, faces, cameras, height, width, attrs=self.attrs, aa=False, topology=topo,
                          backend=backend)
        albedo = out["attrs"]
        if self.texture is not None:
            uv = albedo - torch.floor(albedo)  # glTF's default REPEAT wrap
            albedo = sample_texture(self.texture, uv) * out["mask"]
        normal = world_to_camera_normals(out["normal"], cameras)
        pos = transform_to_clip(verts, cameras.mvp(width / height).to(verts))
        maps = antialias(torch.cat([out["mask"], albedo, normal], -1), out["rast"], pos, faces, topo, backend)
        mask, albedo, normal = maps.split([1, 3, 3], dim=-1)
        mask = mask.clamp(0, 1)
        return {"rgb": (albedo + (1 - mask)).clamp(0, 1), "mask": mask, "depth": out["depth"], "normal": normal}


def normalised_depth(depth: Tensor, inside: Tensor) -> Tensor:
    """Min-max normalise ``depth`` ``[H, W]`` inside ``inside`` ``[H, W]`` (bool) with 1 = near, 0 outside
    (the form of :class:`stages.inputs.Inputs` ``depth``).

    Example:
        >>> normalised_depth(torch.tensor([[2.0, 3.0, 4.0, 9.0]]), torch.tensor([[True, True, True, False]])).tolist()
        [[1.0, 0.5, 0.0, 0.0]]
    """
    d = depth[inside]
    lo, hi = d.min(), d.max()
    return torch.where(inside, (hi - depth) / (hi - lo).clamp_min(1e-12), torch.zeros_like(depth))


def reference_inputs(subject, framing, canvas: int, prompt: str = "", negative_prompt: str = "",
                     backend: str = "auto") -> Inputs:
    """What preprocess would make from a photo of the framed subject, with true depth and normal.

    Args:
        subject: a :class:`evaluation.meshes.SubjectMesh`, a Trimesh or a mesh file.
        framing: :class:`evaluation.framing.Framing` of the subject (see :func:`~evaluation.framing.frame_subject`).
        canvas: side of the square canvas (preprocess ``canvas``).
        prompt, negative_prompt: carried into the Inputs.

    Returns:
        :class:`stages.inputs.Inputs`: ``rgb`` ``[H, W, 3]`` albedo on white, ``mask`` ``[H, W]``,
        ``depth`` ``[H, W]`` min-max normalised inside ``mask > 0.5`` with 1 = near, ``normal``
        ``[H, W, 3]`` unit camera-space normals inside ``mask > 0.5`` (0 outside), as preprocess
        masks and renormalises Sapiens' maps. No landmarks.
    """
    r = render_truth(subject, reference_camera(), canvas, canvas, framing, backend)
    mask = r["mask"][0, ..., 0]
    inside = mask > 0.5
    normal = torch.nn.functional.normalize(r["normal"][0], dim=-1) * inside[..., None]
    return Inputs(rgb=r["rgb"][0].contiguous(), mask=mask.contiguous(),
                  depth=normalised_depth(r["depth"][0, ..., 0], inside), normal=normal,
                  prompt=prompt, negative_prompt=negative_prompt)


def to_uint8(image: Tensor) -> np.ndarray:
    """``[H, W, C]`` in [0, 1] -> uint8 array (for PNG previews)."""
    return (image.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
