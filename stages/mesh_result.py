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

    def to_trimesh(self) -> trimesh.Trimesh:
        """The mesh as a trimesh, vertex colours (grey without albedo) included."""
        colors = self.colors if self.colors is not None else torch.full_like(self.verts, 0.7)
        rgba = np.concatenate([(colors.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8),
                               np.full((len(colors), 1), 255, np.uint8)], axis=1)
        return trimesh.Trimesh(self.verts.detach().cpu().numpy(), self.faces.cpu().numpy(), vertex_colors=rgba,
                               process=False)

    def export(self, folder: Path, formats: list[str]) -> list[Path]:
        """The mesh as ``mesh.glb`` / ``mesh.obj`` (vertex colours; no UV texture before the texture stages)."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for fmt in formats:
            path = folder / f"mesh.{fmt}"
            self.to_trimesh().export(path)
            paths.append(path)
        return paths
