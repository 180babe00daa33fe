"""A stage result that is a triangle mesh (with optional vertex albedo and a network's state)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import trimesh
from safetensors.torch import load_file, save_file
from torch import Tensor

from stages.final import ExportConfig, check_formats, write_views
from stages.render.antialias import Topology, build_topology
from stages.render.cameras import Cameras
from stages.render.export import atomic_path, to_gltf_frame
from stages.render.texture_render import render_albedo, vertex_shade


@dataclass
class MeshResult:
    """A mesh ``verts [V, 3]``, ``faces [F, 3]``, optional ``colors [V, 3]`` in [0, 1], and optionally the
    state of the network it came from with that network's constructor arguments (JSON)."""

    verts: Tensor
    faces: Tensor
    colors: Tensor | None = None
    state: dict[str, Tensor] = field(default_factory=dict)
    args: dict = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        """``mesh.safetensors`` (exact), ``state.safetensors``, ``meta.json`` and ``mesh.ply`` for people."""
        mesh = {"verts": self.verts.float(), "faces": self.faces.long()}
        if self.colors is not None:
            mesh["colors"] = self.colors.float()
        save_file({k: v.detach().cpu().contiguous() for k, v in mesh.items()}, str(folder / "mesh.safetensors"))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state.items()}, str(folder / "state.safetensors"))
        (folder / "meta.json").write_text(json.dumps({"args": self.args}, indent=2))
        self.to_trimesh().export(folder / "mesh.ply")

    @classmethod
    def load(cls, folder: Path):
        """Read what :meth:`save` wrote."""
        mesh = load_file(str(folder / "mesh.safetensors"))
        state = load_file(str(folder / "state.safetensors"))
        args = json.loads((folder / "meta.json").read_text())["args"]
        return cls(mesh["verts"], mesh["faces"], mesh.get("colors"), state, args)

    def albedo(self) -> Tensor:
        """``[V, 3]`` vertex colours, grey (0.7) where the stage made none."""
        return self.colors if self.colors is not None else torch.full_like(self.verts, 0.7)

    def to_trimesh(self) -> trimesh.Trimesh:
        """The mesh as a trimesh (scene frame), vertex colours (grey without albedo) included."""
        rgba = np.concatenate([(self.albedo().detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8),
                               np.full((len(self.verts), 1), 255, np.uint8)], axis=1)
        return trimesh.Trimesh(self.verts.detach().cpu().numpy(), self.faces.cpu().numpy(), vertex_colors=rgba,
                               process=False)

    def render(self, cameras: Cameras, height: int, width: int, topology: Topology | None = None) -> dict[str, Tensor]:
        """Unlit vertex colours ``rgb`` [B, H, W, 3] over white and ``mask`` [B, H, W, 1] from ``cameras``;
        ``topology``: :func:`build_topology` of the faces when rendering many times (built here otherwise)."""
        faces = self.faces.long()
        topology = build_topology(faces) if topology is None else topology
        return render_albedo(self.verts, faces, cameras.to(self.verts.device), height, width,
                             vertex_shade(self.albedo().to(self.verts), faces), topology)

    def export(self, folder: Path, formats: list[str], cfg: ExportConfig | None = None) -> list[Path]:
        """What a geometry stage's mesh can give of ``formats`` (:data:`stages.final.FORMATS`), with vertex
        colours instead of a texture (there is no UV atlas before the texture stages): ``mesh.glb`` and
        ``mesh.obj`` in the glTF frame (+y up, facing +z, as :mod:`stages.render.export` writes), and the
        ``turntable.mp4`` / ``preview.png`` renders of the vertex colours. Each file is written whole
        or not at all."""
        check_formats(formats)
        cfg = ExportConfig() if cfg is None else cfg
        folder.mkdir(parents=True, exist_ok=True)
        mesh = self.to_trimesh()
        mesh.vertices = to_gltf_frame(np.asarray(mesh.vertices))
        paths = []
        for fmt in ("glb", "obj"):
            if fmt in formats:
                with atomic_path(folder / f"mesh.{fmt}") as tmp:
                    mesh.export(tmp, file_type=fmt)
                paths.append(folder / f"mesh.{fmt}")
        topology = build_topology(self.faces.long()) if {"turntable", "preview"} & set(formats) else None

        def render(cams: Cameras, h: int, w: int) -> dict[str, Tensor]:
            return self.render(cams, h, w, topology)
        return paths + write_views(folder, formats, render, cfg)
