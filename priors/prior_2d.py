"""2D prior: SD 1.5-family score distillation (GeneMAN 2D UNet on the SD 1.5 VAE / text encoder).

The same class serves every SD 1.5-family UNet that guides by SDS: the GeneMAN 2D prior on RGB
renders (stages 1 and 3) and HumanNorm's normal- / depth-adapted UNets on rendered normal and
depth maps (stage 2, see :mod:`priors.adapted`).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from priors import memory, sds
from priors.config import Config
from priors.latents import from_latents, to_latents
from priors.text import PromptEmbeddings, PromptEncoder
from priors.weights import all_weights, resolve


class StableDiffusionSDS:
    """SDS with an SD 1.5-family latent diffusion model.

    Args:
        vae: autoencoder; renders are encoded through it (gradients flow through the encoder).
        unet: frozen noise predictor.
        text: prompt encoder of the same pipeline.
        scheduler: noise schedule; only ``add_noise`` and ``alphas_cumprod`` are used.
        cfg_variant: ``standard`` or ``release`` classifier-free guidance (see
            :func:`priors.sds.classifier_free_guidance`).
        weighting: SDS weight w(t) (see :func:`priors.sds.sds_weight`).
        sample_posterior: encode with a sample of the VAE posterior (the release) or its mode.
    """

    def __init__(self, vae: AutoencoderKL, unet: UNet2DConditionModel, text: PromptEncoder, scheduler: DDIMScheduler,
                 cfg_variant: str = "standard", weighting: str = "sds", sample_posterior: bool = True):
        self.vae, self.unet, self.text, self.scheduler = vae, unet, text, scheduler
        self.cfg_variant, self.weighting, self.sample_posterior = cfg_variant, weighting, sample_posterior
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def from_pretrained(cls, cfg: Config, device: torch.device | str, base: str = "sd15",
                        unet_from: str = "prior_2d", cfg_variant: str | None = None) -> "StableDiffusionSDS":
        """Load VAE, text encoder, tokenizer, scheduler from weight ``base`` and the UNet from ``unet_from``.

        Args:
            cfg: priors config (weight ids, precision, memory options).
            device: where the networks run.
            base: key of :func:`priors.weights.all_weights` holding vae/text_encoder/tokenizer/scheduler.
            unet_from: key holding the UNet (``prior_2d``: the GeneMAN 2D prior folder; an SD
                repository key such as ``normal_adapted``: its ``unet/`` folder).
        """
        specs = all_weights(cfg)
        root = resolve(cfg, specs[base])
        unet_root = resolve(cfg, specs[unet_from])
        sub = cfg.prior_2d_subfolder if unet_from == "prior_2d" else "unet"
        parts = load_sd_parts(root, unet_root / sub)
        text = PromptEncoder(parts["tokenizer"], memory.prepare(parts["text_encoder"], cfg, device))
        return cls(memory.prepare(parts["vae"], cfg, device), memory.prepare(parts["unet"], cfg, device), text,
                   parts["scheduler"], cfg_variant or cfg.cfg_variant, cfg.weighting)

    def embed(self, prompt: str, negative_prompt: str = "") -> PromptEmbeddings:
        """Prompt and negative-prompt embeddings."""
        return self.text(prompt, negative_prompt)

    def encode_images(self, images: torch.Tensor, size: int | None = 512,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, 3, H, W] images in [0, 1] -> [B, 4, h, w] latents (shifted and scaled, :mod:`priors.latents`),
        differentiable.

        Args:
            images: renders in [0, 1].
            size: resize (bilinear) to ``size`` x ``size`` first, as the release does at 512; ``None``
                encodes at the render's own size (a multiple of the VAE's downsampling), cheaper.
            generator: randomness of the posterior sample.
        """
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(images, (size, size), mode="bilinear", align_corners=False)
        h, w = images.shape[-2:]
        if h % self.vae_scale or w % self.vae_scale:
            raise ValueError(f"render size {h}x{w} is not a multiple of the VAE downsampling {self.vae_scale}")
        posterior = self.vae.encode((images * 2.0 - 1.0).to(self.vae.dtype)).latent_dist
        z = posterior.sample(generator) if self.sample_posterior else posterior.mode()
        return to_latents(self.vae, z.float())

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 4, h, w] latents (:mod:`priors.latents`) -> [B, 3, H, W] images in [0, 1]."""
        image = self.vae.decode(from_latents(self.vae, latents.float()).to(self.vae.dtype)).sample
        return (image.float() * 0.5 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def predict_noise(self, latents_noisy: torch.Tensor, t: torch.Tensor, embeddings: PromptEmbeddings,
                      guidance_scale: float) -> torch.Tensor:
        """Guided noise prediction: one UNet call on the [cond; uncond] batch, then CFG."""
        n = latents_noisy.shape[0]
        x = torch.cat([latents_noisy] * 2).to(self.unet.dtype)
        ctx = embeddings.batch(n).to(device=x.device, dtype=self.unet.dtype)
        eps = self.unet(x, torch.cat([t] * 2), encoder_hidden_states=ctx).sample.float()
        eps_cond, eps_uncond = eps.chunk(2)
        return sds.classifier_free_guidance(eps_cond, eps_uncond, guidance_scale, self.cfg_variant)

    def sds_latents(self, latents: torch.Tensor, embeddings: PromptEmbeddings, t_range: tuple[float, float],
                    guidance_scale: float, noise: torch.Tensor | None = None, t: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> sds.SDSOutput:
        """SDS on latents (DreamFusion eq. (3)).

        Steps: 1. t ~ U[min_step, max_step] from ``t_range`` (unless given); 2. eps ~ N(0, 1)
        (unless given); 3. z_t = sqrt(a_t) z + sqrt(1 - a_t) eps (scheduler ``add_noise``, DDPM
        eq. (4)); 4. guided eps_pred; 5. grad = w(t) (eps_pred - eps).
        """
        if t is None:
            t = sds.sample_timesteps(latents.shape[0], t_range, self.num_train_timesteps, generator, latents.device)
        if noise is None:
            noise = randn_tensor(latents.shape, generator, latents.device, latents.dtype)
        latents_noisy = self.scheduler.add_noise(latents.detach(), noise, t)
        noise_pred = self.predict_noise(latents_noisy, t, embeddings, guidance_scale)
        return sds.sds_from_prediction(latents, noise, noise_pred, t, self.scheduler.alphas_cumprod, self.weighting)

    def __call__(self, images: torch.Tensor, embeddings: PromptEmbeddings, t_range: tuple[float, float],
                 guidance_scale: float, encode_size: int | None = 512, noise: torch.Tensor | None = None,
                 t: torch.Tensor | None = None, generator: torch.Generator | None = None) -> sds.SDSOutput:
        """SDS on renders: encode [B, 3, H, W] images in [0, 1], then :meth:`sds_latents`.

        The loss's gradient reaches ``images`` through the VAE encoder.
        """
        latents = self.encode_images(images, encode_size, generator)
        return self.sds_latents(latents, embeddings, t_range, guidance_scale, noise, t, generator)


def _text_encoder(folder: Path) -> CLIPTextModel:
    from priors.memory import quiet_loading

    with quiet_loading():
        return CLIPTextModel.from_pretrained(folder, local_files_only=True)


def load_sd_parts(root: Path, unet_dir: Path | None = None) -> dict:
    """Load an SD 1.5-family diffusers folder (``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``).

    The UNet comes from ``unet_dir`` when given. Everything is read from local folders only.
    """
    parts = {
        "vae": AutoencoderKL.from_pretrained(root / "vae", local_files_only=True),
        "text_encoder": _text_encoder(root / "text_encoder"),
        "tokenizer": CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True),
        "scheduler": DDIMScheduler.from_pretrained(root / "scheduler", local_files_only=True),
    }
    if unet_dir is not None:
        parts["unet"] = UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True)
    return parts


def save_sd_parts(folder: Path, vae: AutoencoderKL, text: PromptEncoder, scheduler: DDIMScheduler,
                  unet: UNet2DConditionModel | None = None) -> None:
    """Write the diffusers layout :func:`load_sd_parts` reads (``unet/`` only when given)."""
    folder = Path(folder)
    vae.save_pretrained(folder / "vae")
    text.text_encoder.save_pretrained(folder / "text_encoder")
    text.tokenizer.save_pretrained(folder / "tokenizer")
    scheduler.save_pretrained(folder / "scheduler")
    if unet is not None:
        unet.save_pretrained(folder / "unet")
