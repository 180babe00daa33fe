"""Write diffusers / transformers models in the original LDM + OpenAI CLIP key layout.

The inverse of the conversion under test, written independently from the layouts of
CompVis' ``ldm`` (``input_blocks`` / ``middle_block`` / ``output_blocks``, ``encoder.down.*``)
and OpenAI CLIP (``transformer.resblocks.*``), so a round trip checks both directions.
"""
import torch

_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
_UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _unet_prefixes(unet):
    cfg = unet.config
    n, levels = cfg.layers_per_block, len(cfg.block_out_channels)
    pairs = []
    for i, kind in enumerate(cfg.down_block_types):
        for j in range(n):
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(n + 1) * i + j + 1}.0."))
            pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(n + 1) * i + j + 1}.1."))
        pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(n + 1) * (i + 1)}.0.op."))
    for i, kind in enumerate(cfg.up_block_types):
        for j in range(n + 1):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(n + 1) * i + j}.0."))
            pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(n + 1) * i + j}.1."))
        slot = 2 if kind.startswith("CrossAttn") else 1
        if i < levels - 1:
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(n + 1) * i + n}.{slot}."))
    pairs += [("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
              ("mid_block.resnets.1.", "middle_block.2.")]
    return pairs


def unet_to_ldm(unet, prefix="model.diffusion_model."):
    out = {}
    pairs = _unet_prefixes(unet)
    for key, value in unet.state_dict().items():
        new = None
        for hf, sd in _UNET_FIXED.items():
            if key.startswith(hf + "."):
                new = sd + key[len(hf):]
        for hf, sd in pairs:
            if key.startswith(hf):
                rest = key[len(hf):]
                if "resnets" in hf:
                    for a, b in _RESNET:
                        rest = rest.replace(a + ".", b + ".") if rest.startswith(a + ".") else rest
                new = sd + rest
        assert new is not None, key
        out[prefix + new] = value.clone()
    return out


def vae_to_ldm(vae, prefix="first_stage_model."):
    levels = len(vae.config.block_out_channels)
    out = {}
    attn = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
    for key, value in vae.state_dict().items():
        new = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        for i in range(levels):
            new = new.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            new = new.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            new = new.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block.")
            new = new.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.")
        for k in range(2):
            new = new.replace(f"mid_block.resnets.{k}.", f"mid.block_{k + 1}.")
        if "mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            for a, b in attn.items():
                new = new.replace(a, b)
            if new.endswith("weight") and value.ndim == 2:
                value = value[:, :, None, None]
        out[prefix + new] = value.clone()
    return out


def clip_vision_to_openai(model, prefix="cond_stage_model.model.visual."):
    s = model.state_dict()
    out = {"conv1.weight": s["vision_model.embeddings.patch_embedding.weight"],
           "class_embedding": s["vision_model.embeddings.class_embedding"],
           "positional_embedding": s["vision_model.embeddings.position_embedding.weight"],
           "proj": s["visual_projection.weight"].t().contiguous()}
    for p in ("weight", "bias"):
        out[f"ln_pre.{p}"] = s[f"vision_model.pre_layrnorm.{p}"]
        out[f"ln_post.{p}"] = s[f"vision_model.post_layernorm.{p}"]
    for i in range(model.config.num_hidden_layers):
        src, dst = f"vision_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{p}"] = torch.cat([s[f"{src}self_attn.{n}_proj.{p}"] for n in "qkv"])
            for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                 ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[f"{dst}{theirs}.{p}"] = s[f"{src}{ours}.{p}"]
    return {prefix + k: v.clone() for k, v in out.items()}
