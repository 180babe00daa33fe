"""Every prior's networks at tiny size, built from the same classes as the real ones.

Used by the tests and by CPU smoke runs: no downloaded weight is needed. Sizes keep the real
wiring (SD-style UNet with cross-attention, 8-channel Zero-1-to-3 UNet, ControlNet whose
conditioning embedding matches the VAE's downsampling) while running in milliseconds.

Example:
    >>> parts = sd_parts(seed=0)
    >>> parts.unet.config.in_channels, parts.vae.config.latent_channels
    (4, 4)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from priors.config import Config
from priors.lpips import LPIPS

WIDTH = 32
"""Cross-attention / text / image embedding width of the tiny models."""
LPIPS_WIDTHS = (4, 8, 8, 16, 16)
"""Channels of the tiny LPIPS's five VGG16 blocks (the real ones: 64, 128, 256, 512, 512)."""
LDM_YAML = {
    "model": {"params": {
        "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215,
        "unet_config": {"params": {
            "image_size": 16, "in_channels": 8, "out_channels": 4, "model_channels": 32,
            "attention_resolutions": [1], "num_res_blocks": 2, "channel_mult": [1, 2], "num_heads": 2,
            "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": WIDTH, "legacy": False}},
        "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": {
            "double_z": True, "z_channels": 4, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
            "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}},
    }},
}
"""A tiny Zero-1-to-3 LDM yaml (same keys as the release's ``prior_3d.yaml``)."""


@dataclass
class SDParts:
    """The networks of one SD 1.5-family pipeline."""

    vae: AutoencoderKL
    """Image <-> latent autoencoder."""
    unet: UNet2DConditionModel
    """Noise predictor."""
    text_encoder: CLIPTextModel
    """Prompt encoder."""
    tokenizer: CLIPTokenizer
    """Prompt tokenizer."""
    scheduler: DDIMScheduler
    """Noise schedule (SD 1.5: scaled-linear betas 0.00085..0.012, 1000 steps)."""


def _byte_chars() -> list[str]:
    """The 256 printable characters CLIP's byte-level BPE uses for the 256 byte values."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    extra = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]


def tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with a byte-level vocabulary and no merges, built locally (514 tokens)."""
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def _text_config() -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=514, hidden_size=WIDTH, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, projection_dim=WIDTH,
                          bos_token_id=512, eos_token_id=513, pad_token_id=513)


def _vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
                            image_size=32, patch_size=8, projection_dim=WIDTH, hidden_act="quick_gelu")


def text_encoder(seed: int = 0) -> CLIPTextModel:
    """A 2-layer CLIP text encoder of width :data:`WIDTH` for :func:`tokenizer`."""
    torch.manual_seed(seed)
    return CLIPTextModel(_text_config()).eval()


def image_encoder(seed: int = 0) -> CLIPVisionModelWithProjection:
    """A 2-layer CLIP image encoder shaped by OpenAI CLIP's rules (one head per 64 channels,
    MLP 4x wide, quick-GELU), 32 px input, projecting to :data:`WIDTH`."""
    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(_vision_config()).eval()


def clip(seed: int = 0) -> CLIPModel:
    """A whole CLIP (:func:`text_encoder`'s and :func:`image_encoder`'s shapes), saved as the Hub's
    ``openai/clip-vit-*`` repositories are: one ``config.json`` (model_type ``clip``) and one
    ``model.safetensors`` (``geneman eval``'s CLIP similarity reads its image tower)."""
    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config=_text_config().to_dict(), vision_config=_vision_config().to_dict(),
                     projection_dim=WIDTH)
    return CLIPModel(cfg).eval()


def unet(in_channels: int = 4, seed: int = 0, sample_size: int = 16) -> UNet2DConditionModel:
    """SD-style UNet: two levels (cross-attention, plain), two resnets each, 2 heads; ``sample_size``:
    the latent side it is meant for (:attr:`priors.prior_3d.Zero123SDS.native_size` reads it)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=2, cross_attention_dim=WIDTH, attention_head_dim=2).eval()


VAE_GROUPS = 8
"""GroupNorm groups of the tiny VAE: 4 to 8 channels a group, as SD's VAE has 4 (128 to 512 channels in 32
groups). diffusers' default of 32 groups on 32 channels normalises every channel of every image alone
(instance normalisation), which takes each channel's level, the colours, out of the features."""


def vae(seed: int = 0, sample_size: int = 32) -> AutoencoderKL:
    """Two-level KL autoencoder (downsampling 2, :data:`VAE_GROUPS` norm groups) with SD's latent scaling
    factor; ``sample_size``: the image side it is meant for."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=VAE_GROUPS, sample_size=sample_size, scaling_factor=0.18215).eval()


def cc_projection(seed: int = 0) -> torch.nn.Linear:
    """Zero-1-to-3's projection of [CLIP image embedding, 4 camera numbers] to the context width."""
    torch.manual_seed(seed)
    return torch.nn.Linear(WIDTH + 4, WIDTH)


def controlnet(seed: int = 0) -> ControlNetModel:
    """ControlNet matching :func:`unet`, its conditioning embedding downsampling 2 as :func:`vae`.

    A new ControlNet's output convolutions are zero (it starts as a no-op); here they are drawn at
    random, as after training, so the control image changes the result.
    """
    torch.manual_seed(seed)
    model = ControlNetModel(
        in_channels=4, block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        layers_per_block=2, cross_attention_dim=WIDTH, attention_head_dim=2,
        conditioning_embedding_out_channels=(16, 32)).eval()
    zero_init = [model.controlnet_cond_embedding.conv_out, model.controlnet_mid_block, *model.controlnet_down_blocks]
    with torch.no_grad():
        for conv in zero_init:
            conv.weight.normal_(0.0, 0.1)
    return model


def scheduler() -> DDIMScheduler:
    """SD 1.5's noise schedule (the real one: schedules have no weights)."""
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def sd_parts(seed: int = 0, unet_in_channels: int = 4) -> SDParts:
    """A complete tiny SD 1.5-family pipeline."""
    return SDParts(vae(seed), unet(unet_in_channels, seed), text_encoder(seed), tokenizer(), scheduler())


class TinySapiens(torch.nn.Module):
    """Stand-in with Sapiens' interface: [B, 3, 1024, 768] normalised image -> half-resolution map."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.nn.functional.avg_pool2d(x, 2))


def write_sapiens(path: str, kind: str, seed: int = 0) -> None:
    """Write a TorchScript file with Sapiens' interface (``kind``: ``normal`` or ``depth``)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # TorchScript is the released files' format, deprecated in recent torch
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(TinySapiens(3 if kind == "normal" else 1)), path)


def lpips(seed: int = 0) -> LPIPS:
    """LPIPS with :data:`LPIPS_WIDTHS`: seeded random VGG16 convolutions, heads drawn in [0, 1)
    (the trained heads are non-negative, so distances are too)."""
    torch.manual_seed(seed)
    model = LPIPS(LPIPS_WIDTHS)
    with torch.no_grad():
        for head in model.heads:
            head.model[1].weight.uniform_(0.0, 1.0)
    return model


def write_weights(folder: str | Path, seed: int = 0) -> Config:
    """Write every weight the presets and ``geneman eval`` need, at tiny size, in the layout
    :mod:`priors.weights` expects.

    Returns a priors config pointing at ``folder`` (the 3D prior in diffusers format), so the real
    loading code (:class:`priors.registry.PriorSet`) runs end to end without downloads.
    """
    from priors.prior_2d import save_sd_parts
    from priors.text import PromptEncoder
    from priors.zero123_parts import Zero123Parts

    cfg = Config(weights_dir=str(folder), prior_3d_diffusers="tiny/geneman-prior3d")
    root = Path(folder)
    for repo, with_unet in ((cfg.sd15, False), (cfg.normal_adapted, True), (cfg.depth_adapted, True),
                            (cfg.normal_aligned, False)):
        p = sd_parts(seed)
        save_sd_parts(root / repo, p.vae, PromptEncoder(p.tokenizer, p.text_encoder), p.scheduler,
                      p.unet if with_unet else None)
    unet(4, seed).save_pretrained(root / cfg.geneman_repo / cfg.prior_2d_subfolder)
    controlnet(seed).save_pretrained(root / cfg.controlnet_normal)
    Zero123Parts(unet(8, seed), vae(seed), image_encoder(seed), cc_projection(seed),
                 scheduler()).save_pretrained(root / cfg.prior_3d_diffusers)
    for kind in ("normal", "depth"):
        (root / getattr(cfg, f"sapiens_{kind}")).mkdir(parents=True, exist_ok=True)
        write_sapiens(str(root / getattr(cfg, f"sapiens_{kind}") / getattr(cfg, f"sapiens_{kind}_file")), kind, seed)
    lpips(seed).save_pretrained(root / cfg.lpips)
    clip(seed).save_pretrained(root / cfg.clip_eval)
    return cfg
