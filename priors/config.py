"""Where the pretrained weights come from and how the frozen networks run."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Config:
    """Pretrained weight sources (hub ids as the release names them) and memory options."""

    weights_dir: str = ""
    """Local folder holding the weights (one sub-folder per hub id); empty: the Hugging Face cache."""
    sd15: str = "runwayml/stable-diffusion-v1-5"
    """SD 1.5 base: VAE, text encoder, tokenizer, scheduler."""
    geneman_repo: str = "wwt117/GeneMAN"
    """Hugging Face dataset holding the GeneMAN 2D prior UNet, the 3D prior and tet grids."""
    normal_adapted: str = "xanderhuang/normal-adapted-sd1.5"
    """HumanNorm normal-adapted SD 1.5 (stage 2 guidance)."""
    depth_adapted: str = "xanderhuang/depth-adapted-sd1.5"
    """HumanNorm depth-adapted SD 1.5 (stage 2 guidance)."""
    normal_aligned: str = "xanderhuang/normal-aligned-sd1.5"
    """HumanNorm normal-aligned SD 1.5 (stage 4 SDEdit)."""
    controlnet_normal: str = "xanderhuang/controlnet-normal-sd1.5"
    """Normal ControlNet for SD 1.5 (stage 4 SDEdit)."""
    sapiens_normal: str = "facebook/sapiens-normal-2b-torchscript"
    """Sapiens normal estimator (TorchScript)."""
    sapiens_depth: str = "facebook/sapiens-depth-2b-torchscript"
    """Sapiens depth estimator (TorchScript)."""
    dtype: str = "auto"
    """Network precision: ``auto`` (fp16 on CUDA, fp32 on CPU), ``fp32``, ``fp16`` or ``bf16``."""
    attention_slicing: bool = False
    """Compute attention in slices to save memory."""
    cpu_offload: bool = False
    """Keep networks on the CPU and move each to the GPU only while it runs."""
