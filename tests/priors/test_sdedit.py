"""ControlNet SDEdit against diffusers' own img2img ControlNet pipeline, and its DDIM settings."""
import json

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionControlNetImg2ImgPipeline

from priors import tiny
from priors.sdedit import ControlNetSDEdit
from priors.text import PromptEncoder


@pytest.fixture(scope="module")
def parts():
    return tiny.sd_parts(0), tiny.controlnet(0)


def _reference(p, controlnet, sdedit, images, control, emb, strength, steps, scale, seed):
    """diffusers' pipeline on the same networks, scheduler config, prompt embeddings and generator.

    The pipeline's ControlNet scale defaults to 0.8, so it is passed as ours (1.0). Both sample the VAE
    posterior and then the noise from one generator, in that order, so the same seed gives the same draws;
    the pipeline batches [uncond; cond], we batch [cond; uncond].
    """
    pipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet, controlnet=controlnet,
        scheduler=DDIMScheduler.from_config(sdedit.scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    h, w = images.shape[-2:]
    return pipe(prompt_embeds=emb.cond, negative_prompt_embeds=emb.uncond, image=images, control_image=control,
                height=h, width=w, strength=strength, num_inference_steps=steps, guidance_scale=scale,
                controlnet_conditioning_scale=1.0, generator=torch.Generator().manual_seed(seed),
                output_type="pt").images


@pytest.mark.parametrize("strength,steps,scale", [(0.5, 10, 7.5), (0.8, 6, 3.0)])
def test_sdedit_matches_the_diffusers_controlnet_img2img_pipeline(parts, strength, steps, scale):
    """Same tiny parts, scheduler, generator, strength, steps, guidance and control image: same output.

    Guards the CFG chunk order, the strength's first timestep as noise level and every DDIM update.
    """
    p, controlnet = parts
    sdedit = ControlNetSDEdit(p.vae, p.unet, controlnet, PromptEncoder(p.tokenizer, p.text_encoder), p.scheduler)
    torch.manual_seed(3)
    images, control = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    emb = sdedit.embed("a person", "blurry")
    ours = sdedit(images, control, emb, strength, steps, scale, conditioning_scale=1.0, size=None,
                  generator=torch.Generator().manual_seed(5))
    ref = _reference(p, controlnet, sdedit, images, control, emb, strength, steps, scale, seed=5)
    assert ref.shape == ours.shape
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_sdedit_ddim_never_clips_x0_even_when_the_scheduler_config_lacks_the_key(parts, tmp_path):
    p, controlnet = parts
    p.scheduler.save_pretrained(tmp_path)
    cfg_file = tmp_path / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    del cfg["clip_sample"]
    cfg_file.write_text(json.dumps(cfg))
    loaded = DDIMScheduler.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.config.clip_sample is True  # DDIM's default, which SD 1.5's config overrides
    sdedit = ControlNetSDEdit(p.vae, p.unet, controlnet, PromptEncoder(p.tokenizer, p.text_encoder), loaded)
    assert sdedit.scheduler.config.clip_sample is False
    assert type(sdedit.scheduler) is DDIMScheduler
