"""The avatar: a closed mesh with a UV atlas and an albedo texture map (stage 4's Result).

Vertices are stored welded (``verts``, the mesh the geometry stages made) beside the UV atlas
(``uvs`` over ``uv_faces``, split along seams; ``vmapping`` names each UV vertex's mesh vertex), so
the closed mesh renders with culling and antialiasing, and the split one is what file formats hold.

Positions are in the scene frame (z up, the person facing the reference camera on +x). The files of
:meth:`TexturedMesh.export` hold the glTF frame (+y up, facing +z; :mod:`stages.render.export`), so a
mesh read back from them with :func:`stages.render.export.load_textured` is in the scene frame again
only with its default ``to_scene=True``; :meth:`TexturedMesh.from_split` takes whatever frame it is given.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor

from stages.final import ExportConfig, check_formats, write_views
from stages.render.antialias import Topology, build_topology
from stages.render.cameras import Cameras
from stages.render.export import export_glb, export_obj, to_uint8
from stages.render.texture_render import render_albedo, texture_shade

MESH_FILE = "textured.safetensors"


@dataclass
class TexturedMesh:
    """A textured mesh.

    Attributes:
        verts: [V, 3] welded vertex positions.
        vmapping: [U] mesh vertex of each UV vertex.
        uvs: [U, 2] texture coordinates in [0, 1] (``v`` up).
        uv_faces: [F, 3] triangles over the UV vertices.
        texture: [T, T, 3] albedo in [0, 1], row 0 at ``v = 1``.
    """

    verts: Tensor
    vmapping: Tensor
    uvs: Tensor
    uv_faces: Tensor
    texture: Tensor

    @property
    def faces(self) -> Tensor:
        """[F, 3] the same triangles over the welded vertices."""
        return self.vmapping[self.uv_faces]

    def split(self) -> tuple[Tensor, Tensor, Tensor]:
        """The mesh split along UV seams, as file formats hold it: verts [U, 3], faces [F, 3], uvs [U, 2]."""
        return self.verts[self.vmapping], self.uv_faces, self.uvs

    def render(self, cameras: Cameras, height: int, width: int,
               background: tuple[float, float, float] = (1.0, 1.0, 1.0),
               topology: Topology | None = None) -> dict[str, Tensor]:
        """Unlit albedo ``rgb`` [B, H, W, 3] over ``background`` and ``mask`` [B, H, W, 1] from ``cameras``
        (:func:`stages.render.texture_render.render_albedo`); ``topology``: :func:`build_topology` of
        :attr:`faces`, when the caller renders many times (built here otherwise)."""
        faces = self.faces
        shade = texture_shade(self.texture, self.uvs, self.uv_faces)
        topology = build_topology(faces) if topology is None else topology
        return render_albedo(self.verts, faces, cameras.to(self.verts.device), height, width, shade,
                             topology, background)

    def export(self, folder: Path, formats: list[str], cfg: ExportConfig | None = None) -> list[Path]:
        """Write ``formats`` (of :data:`stages.final.FORMATS`) into ``folder`` (a run's ``final/``), each
        file whole or not at all (temporary name, then rename):

        - ``glb``: ``avatar.glb``, one mesh with UVs, normals and a PBR material (the texture as
          baseColor, factor 1, metallic 0, roughness 1), glTF frame (+y up, facing +z);
        - ``obj``: ``avatar.obj`` + ``avatar.mtl`` (Kd 1 1 1) + ``avatar_albedo.png``, the same frame;
        - ``turntable`` / ``preview``: ``turntable.mp4`` / ``preview.png`` (:mod:`stages.final`).

        Args:
            folder: where the files go (made if missing).
            formats: names from :data:`stages.final.FORMATS`.
            cfg: sizes of the video and preview (default :class:`stages.final.ExportConfig`).

        Returns:
            The paths written (the OBJ's MTL and PNG not listed), in the order of :data:`stages.final.FORMATS`.
        """
        check_formats(formats)
        cfg = ExportConfig() if cfg is None else cfg
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        if "glb" in formats:
            paths.append(export_glb(folder / "avatar.glb", *self.split(), self.texture))
        if "obj" in formats:
            paths.append(export_obj(folder / "avatar.obj", *self.split(), self.texture))
        topology = build_topology(self.faces) if {"turntable", "preview"} & set(formats) else None

        def render(cams: Cameras, h: int, w: int) -> dict[str, Tensor]:
            return self.render(cams, h, w, topology=topology)
        return paths + write_views(folder, formats, render, cfg)

    def save(self, folder: Path) -> None:
        """``textured.safetensors`` (exact) and ``texture.png`` (8-bit, for people)."""
        tensors = {"verts": self.verts.float(), "vmapping": self.vmapping.long(), "uvs": self.uvs.float(),
                   "uv_faces": self.uv_faces.long(), "texture": self.texture.float()}
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(folder / MESH_FILE))
        Image.fromarray(to_uint8(self.texture)).save(folder / "texture.png")
        (folder / "meta.json").write_text(json.dumps({"texture_size": int(self.texture.shape[0])}, indent=2))

    @classmethod
    def load(cls, folder: Path) -> "TexturedMesh":
        """Read what :meth:`save` wrote."""
        t = load_file(str(folder / MESH_FILE))
        return cls(t["verts"], t["vmapping"], t["uvs"], t["uv_faces"], t["texture"])

    @classmethod
    def from_split(cls, verts: Tensor, faces: Tensor, uvs: Tensor, texture: Tensor) -> "TexturedMesh":
        """From a mesh split along seams (as a GLB / OBJ holds it): vertices at the same position are welded.

        Positions are taken as given: pass scene-frame ones (what
        :func:`stages.render.export.load_textured` returns by default), not the files' glTF frame.
        """
        welded, inverse = torch.unique(verts.float(), dim=0, return_inverse=True)
        return cls(welded, inverse.long(), uvs.float(), faces.long(), texture.float())
