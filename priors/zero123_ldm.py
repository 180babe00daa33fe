"""Zero-1-to-3 LDM checkpoint (``last.ckpt`` + yaml, as the release ships the 3D prior) -> diffusers.

The UNet and VAE keys are mapped by diffusers' own single-file converters; the CLIP image
encoder (saved in OpenAI CLIP's layout under ``cond_stage_model.model.visual``) is mapped here
to transformers' ``CLIPVisionModelWithProjection``; ``cc_projection`` is a plain linear layer.
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
import yaml
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from priors.zero123_parts import Zero123Parts

log = logging.getLogger(__name__)
CLIP_PREFIX = "cond_stage_model.model.visual."


def load_ldm_state_dict(path: str | Path, trusted: bool = False) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning / LDM checkpoint, read with tensors-only unpickling.

    Args:
        path: ``last.ckpt``.
        trusted: when the file holds other pickled objects (Lightning callbacks), fall back to full
            unpickling; only for files from a trusted source.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trusted:
            raise ValueError(f"{path} holds more than tensors ({err}); set priors.trust_prior_3d_pickle=true "
                             "if the file is trusted, or convert it once to a diffusers folder") from err
        log.warning("loading %s with full unpickling (trusted)", path)
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt.get("state_dict", ckpt)


def clip_vision_from_openai(state: dict[str, torch.Tensor], prefix: str = CLIP_PREFIX) -> CLIPVisionModelWithProjection:
    """OpenAI CLIP visual tower (``conv1``, ``transformer.resblocks.*``, ``proj``) -> transformers.

    The architecture is read from the tensor shapes with OpenAI CLIP's rules: one attention head
    per 64 channels, quick-GELU, LayerNorm eps 1e-5.
    """
    s = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    width, _, patch, _ = s["conv1.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in s if k.startswith("transformer.resblocks."))
    grid = int(round((s["positional_embedding"].shape[0] - 1) ** 0.5))
    cfg = CLIPVisionConfig(hidden_size=width, intermediate_size=s["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                           num_hidden_layers=layers, num_attention_heads=max(1, width // 64), image_size=grid * patch,
                           patch_size=patch, projection_dim=s["proj"].shape[1], hidden_act="quick_gelu")
    new = {"vision_model.embeddings.patch_embedding.weight": s["conv1.weight"],
           "vision_model.embeddings.class_embedding": s["class_embedding"],
           "vision_model.embeddings.position_embedding.weight": s["positional_embedding"],
           "visual_projection.weight": s["proj"].t().contiguous()}
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for p in ("weight", "bias"):
            new[f"vision_model.{ours}.{p}"] = s[f"{theirs}.{p}"]
    for i in range(layers):
        src, dst = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        for p in ("weight", "bias"):
            q, k, v = s[f"{src}attn.in_proj_{p}"].chunk(3)
            new.update({f"{dst}self_attn.q_proj.{p}": q, f"{dst}self_attn.k_proj.{p}": k,
                        f"{dst}self_attn.v_proj.{p}": v})
            for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                 ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                new[f"{dst}{ours}.{p}"] = s[f"{src}{theirs}.{p}"]
    model = CLIPVisionModelWithProjection(cfg)
    missing, unexpected = model.load_state_dict(new, strict=False)
    if unexpected or [m for m in missing if "position_ids" not in m]:
        raise ValueError(f"CLIP image encoder conversion left keys: missing {missing}, unexpected {unexpected}")
    return model.eval()


def scheduler_from_ldm(original_config: dict) -> DDIMScheduler:
    """The LDM noise schedule (scaled-linear betas between ``linear_start`` and ``linear_end``)."""
    p = original_config["model"]["params"]
    return DDIMScheduler(num_train_timesteps=p.get("timesteps", 1000), beta_start=p.get("linear_start", 0.00085),
                         beta_end=p.get("linear_end", 0.012), beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def convert_ldm(state: dict[str, torch.Tensor], original_config: dict) -> Zero123Parts:
    """Build diffusers / transformers Zero-1-to-3 networks from an LDM state dict and its yaml."""
    params = original_config["model"]["params"]
    if CLIP_PREFIX + "conv1.weight" not in state:
        raise ValueError(f"the checkpoint has no CLIP image encoder ({CLIP_PREFIX}*)")
    unet_cfg = create_unet_diffusers_config_from_ldm(original_config, state)
    unet_cfg["sample_size"] = params["unet_config"]["params"]["image_size"]
    unet = UNet2DConditionModel(**unet_cfg)
    use_ema = params.get("use_ema", True)
    unet.load_state_dict(convert_ldm_unet_checkpoint(state, unet_cfg, extract_ema=use_ema), strict=True)
    vae_cfg = create_vae_diffusers_config_from_ldm(original_config, state)
    vae_cfg["sample_size"] = params["first_stage_config"]["params"]["ddconfig"]["resolution"]
    vae = AutoencoderKL(**vae_cfg)
    vae.load_state_dict(convert_ldm_vae_checkpoint(state, vae_cfg), strict=True)
    weight = state["cc_projection.weight"]
    proj = torch.nn.Linear(weight.shape[1], weight.shape[0])
    proj.load_state_dict({"weight": weight, "bias": state["cc_projection.bias"]})
    return Zero123Parts(unet.eval(), vae.eval(), clip_vision_from_openai(state), proj.eval(),
                        scheduler_from_ldm(original_config))


def load_ldm(ckpt: str | Path, config_yaml: str | Path, trusted: bool = False) -> Zero123Parts:
    """Read ``last.ckpt`` and its yaml and convert them (see :func:`convert_ldm`)."""
    original_config = yaml.safe_load(Path(config_yaml).read_text())
    return convert_ldm(load_ldm_state_dict(ckpt, trusted), original_config)


def convert_to_folder(ckpt: str | Path, config_yaml: str | Path, out: str | Path, trusted: bool = False) -> Path:
    """Convert the LDM files once and write a diffusers folder; set ``priors.prior_3d_diffusers`` to it
    (later runs then load safetensors, no unpickling)."""
    load_ldm(ckpt, config_yaml, trusted).save_pretrained(out)
    return Path(out)
