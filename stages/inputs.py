"""What preprocess hands to the stages: the recentred photo, its mask, optional depth/normal and body landmarks."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file


@dataclass
class Inputs:
    """The reference view, on a square canvas, background painted white.

    Attributes:
        rgb: ``[H, W, 3]`` float32 in [0, 1].
        mask: ``[H, W]`` float32 in [0, 1] (1 = person).
        depth: ``[H, W]`` float32 in [0, 1], min-max normalised inside the mask (1 = near), or None.
        normal: ``[H, W, 3]`` float32 unit camera-space normals inside the mask, or None.
        landmarks: ``[33, 3]`` float32 MediaPipe Pose landmarks ``(x, y, visibility)``, x and y as
            fractions of the canvas (x right, y down), or None.
        prompt: text prompt of the 2D prior.
        negative_prompt: negative prompt of the 2D prior.
    """

    rgb: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor | None = None
    normal: torch.Tensor | None = None
    landmarks: torch.Tensor | None = None
    prompt: str = ""
    negative_prompt: str = ""

    def __post_init__(self):
        h, w = self.mask.shape
        assert self.rgb.shape == (h, w, 3), f"rgb {tuple(self.rgb.shape)} vs mask {(h, w)}"
        assert self.depth is None or self.depth.shape == (h, w)
        assert self.normal is None or self.normal.shape == (h, w, 3)
        assert self.landmarks is None or self.landmarks.shape == (33, 3), tuple(self.landmarks.shape)

    def save(self, folder: Path) -> None:
        """Write ``inputs.safetensors`` (exact), ``meta.json`` and PNG views for people."""
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"rgb": self.rgb, "mask": self.mask}
        if self.depth is not None:
            tensors["depth"] = self.depth
        if self.normal is not None:
            tensors["normal"] = self.normal
        if self.landmarks is not None:
            tensors["landmarks"] = self.landmarks
        save_file({k: v.contiguous().float() for k, v in tensors.items()}, str(folder / "inputs.safetensors"))
        meta = {"prompt": self.prompt, "negative_prompt": self.negative_prompt}
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))
        rgba = torch.cat([self.rgb, self.mask[..., None]], dim=-1)
        _png(rgba, folder / "rgba.png")
        _png(self.mask, folder / "mask.png")
        if self.depth is not None:
            _png(self.depth, folder / "depth.png")
        if self.normal is not None:
            _png(self.normal * 0.5 + 0.5, folder / "normal.png")

    @classmethod
    def load(cls, folder: Path) -> "Inputs":
        """Read what :meth:`save` wrote."""
        t = load_file(str(folder / "inputs.safetensors"))
        meta = json.loads((folder / "meta.json").read_text())
        return cls(rgb=t["rgb"], mask=t["mask"], depth=t.get("depth"), normal=t.get("normal"),
                   landmarks=t.get("landmarks"), prompt=meta.get("prompt", ""),
                   negative_prompt=meta.get("negative_prompt", ""))


def reference_maps(inputs: Inputs, res: int, device: torch.device | str) -> dict[str, torch.Tensor | None]:
    """The photo and its maps at ``res`` x ``res`` as ``[1, res, res, C]`` on ``device`` (area filter;
    normals renormalised, zero outside the mask): ``rgb``, ``mask``, ``depth``, ``normal`` (None where absent)."""
    def resize(x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None:
            return None
        x = x.reshape(*x.shape[:2], -1).permute(2, 0, 1)[None].float()
        return F.interpolate(x, (res, res), mode="area")[0].permute(1, 2, 0)[None].to(device)

    normal = resize(inputs.normal)
    if normal is not None:
        normal = F.normalize(normal, dim=-1) * (normal.norm(dim=-1, keepdim=True) > 0.5)
    return {"rgb": resize(inputs.rgb), "mask": resize(inputs.mask), "depth": resize(inputs.depth), "normal": normal}


def _png(x: torch.Tensor, path: Path) -> None:
    arr = (x.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(arr).save(path)
