"""The networks of a Zero-1-to-3 model (the GeneMAN 3D prior) and their diffusers-format folder.

Its own module so that :mod:`priors.prior_3d` (the SDS) and :mod:`priors.zero123_ldm` (the LDM
checkpoint conversion) both import it and not each other.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionModelWithProjection


@dataclass
class Zero123Parts:
    """The networks of a Zero-1-to-3 model in diffusers / transformers classes."""

    unet: UNet2DConditionModel
    """8-channel-input noise predictor."""
    vae: AutoencoderKL
    """Autoencoder (SD's)."""
    image_encoder: CLIPVisionModelWithProjection
    """CLIP image encoder (OpenAI ViT-L/14 in the real model)."""
    cc_projection: torch.nn.Linear
    """[image embedding, 4 camera numbers] -> context width."""
    scheduler: DDIMScheduler
    """Noise schedule from the LDM yaml."""

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the diffusers-format folder :meth:`from_pretrained` reads."""
        folder = Path(folder)
        self.unet.save_pretrained(folder / "unet")
        self.vae.save_pretrained(folder / "vae")
        self.image_encoder.save_pretrained(folder / "image_encoder")
        self.scheduler.save_pretrained(folder / "scheduler")
        (folder / "cc_projection").mkdir(parents=True, exist_ok=True)
        cfg = {"in_features": self.cc_projection.in_features, "out_features": self.cc_projection.out_features}
        (folder / "cc_projection" / "config.json").write_text(json.dumps(cfg))
        state = {k: v.contiguous() for k, v in self.cc_projection.state_dict().items()}
        save_file(state, str(folder / "cc_projection" / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "Zero123Parts":
        """Load a folder written by :meth:`save_pretrained` (local files only)."""
        folder = Path(folder)
        cfg = json.loads((folder / "cc_projection" / "config.json").read_text())
        proj = torch.nn.Linear(cfg["in_features"], cfg["out_features"])
        proj.load_state_dict(load_file(str(folder / "cc_projection" / "model.safetensors")))
        from priors.memory import quiet_loading

        with quiet_loading():
            image_encoder = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder",
                                                                          local_files_only=True)
        return cls(UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True),
                   AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True), image_encoder, proj,
                   DDIMScheduler.from_pretrained(folder / "scheduler", local_files_only=True))
