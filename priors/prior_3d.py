"""3D prior: Zero-1-to-3 score distillation (GeneMAN 3D prior, Zero-1-to-3 architecture).

The UNet takes 8 channels: the noisy latent of the novel view concatenated with the (unscaled)
VAE latent of the reference image. Its cross-attention context is one token: the CLIP image
embedding of the reference concatenated with the relative camera (polar change, sin / cos of the
azimuth change, distance change) and mapped by the learned linear ``cc_projection``
(Zero-1-to-3, arXiv 2303.11328, Sec. 3.2). Unconditional = zero context and zero latent.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from priors import memory, sds, zero123_ldm
from priors.config import Config
from priors.latents import to_latents
from priors.zero123_parts import Zero123Parts

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def relative_camera(elevation: torch.Tensor, azimuth: torch.Tensor, distance: torch.Tensor,
                    ref: tuple[float, float, float]) -> torch.Tensor:
    """[B, 1, 4] Zero-1-to-3 camera: (polar change in rad, sin / cos azimuth change, distance change).

    Zero-1-to-3's polar angle is 90 - elevation, so the polar change is ``ref_elev - elev``.

    Example:
        >>> cam = relative_camera(torch.tensor([10.]), torch.tensor([30.]), torch.tensor([3.5]), (0., 0., 3.))
        >>> [round(v, 3) for v in cam.flatten().tolist()]
        [-0.175, 0.5, 0.866, 0.5]
    """
    ref_elev, ref_azim, ref_dist = ref
    d_azim = torch.deg2rad(azimuth - ref_azim)
    cam = [torch.deg2rad(ref_elev - elevation), torch.sin(d_azim), torch.cos(d_azim), distance - ref_dist]
    return torch.stack(cam, dim=-1)[:, None, :].float()


class Zero123SDS:
    """SDS with a Zero-1-to-3 model conditioned on the reference photo and the relative camera.

    Args:
        parts: the networks.
        weighting: SDS weight w(t) (see :func:`priors.sds.sds_weight`).
        cond_size: side the reference image is resized to for its VAE latent; None: :attr:`native_size`
            (256 for Zero-1-to-3, as in the release). Renders are encoded at this side too by default,
            as their latents are concatenated with the reference's.
    """

    def __init__(self, parts: Zero123Parts, weighting: str = "sds", cond_size: int | None = None):
        self.parts, self.weighting = parts, weighting
        self.num_train_timesteps = parts.scheduler.config.num_train_timesteps
        # image side the UNet was trained at (latent side x VAE downsampling): 256 for Zero-1-to-3
        self.native_size = parts.unet.config.sample_size * 2 ** (len(parts.vae.config.block_out_channels) - 1)
        self.cond_size = self.native_size if cond_size is None else cond_size
        self.c_crossattn: torch.Tensor | None = None
        self.c_concat: torch.Tensor | None = None
        self.ref = (0.0, 0.0, 3.0)

    @classmethod
    def from_pretrained(cls, cfg: Config, device: torch.device | str) -> "Zero123SDS":
        """Load the 3D prior: a diffusers folder if ``cfg.prior_3d_diffusers`` is set, else the LDM files."""
        from priors.weights import all_weights, resolve

        root = resolve(cfg, all_weights(cfg)["prior_3d"])
        if cfg.prior_3d_diffusers:
            parts = Zero123Parts.from_pretrained(root)
        else:
            parts = zero123_ldm.load_ldm(root / cfg.prior_3d_ckpt, root / cfg.prior_3d_yaml,
                                         trusted=cfg.trust_prior_3d_pickle)
        for name in ("unet", "vae", "image_encoder", "cc_projection"):
            setattr(parts, name, memory.prepare(getattr(parts, name), cfg, device))
        return cls(parts, cfg.weighting)

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings [B, 1, D] of [B, 3, H, W] source images in [0, 1] (white background),
        differentiable (the 3D trainer trains a from-scratch tiny encoder through it): resized to
        :attr:`cond_size` (area), then to the encoder's side (bicubic), CLIP-normalised."""
        p = self.parts
        img = F.interpolate(images, (self.cond_size, self.cond_size), mode="area")
        size = p.image_encoder.config.image_size
        clip_in = F.interpolate(img, (size, size), mode="bicubic", align_corners=True)
        mean, std = (torch.tensor(v, device=img.device).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
        clip_in = ((clip_in - mean) / std).to(p.image_encoder.dtype)
        return p.image_encoder(pixel_values=clip_in).image_embeds[:, None].float()

    @torch.no_grad()
    def source_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Unscaled VAE latents (the posterior's mode, as Zero-1-to-3 concatenates them) [B, 4, h, w] of
        [B, 3, H, W] source images in [0, 1], resized to :attr:`cond_size` (area)."""
        vae = self.parts.vae
        img = F.interpolate(images, (self.cond_size, self.cond_size), mode="area") * 2.0 - 1.0
        return vae.encode(img.to(vae.dtype)).latent_dist.mode().float()

    @torch.no_grad()
    def condition(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What Zero-1-to-3 conditions on, for [B, 3, H, W] source images in [0, 1] (white background):
        their CLIP image embeddings [B, 1, D] (:meth:`image_embedding`) and unscaled VAE latents
        [B, 4, h, w] (:meth:`source_latent`). ``set_reference`` and :func:`training.novel_views.novel_views`
        use this."""
        return self.image_embedding(images), self.source_latent(images)

    def set_reference(self, image: torch.Tensor, elevation: float, azimuth: float, distance: float) -> None:
        """Embed the reference photo [1, 3, H, W] in [0, 1] (white background) taken from the given camera."""
        self.c_crossattn, self.c_concat = self.condition(image)
        self.ref = (float(elevation), float(azimuth), float(distance))

    def model_inputs(self, latents_noisy: torch.Tensor, c_crossattn: torch.Tensor, c_concat: torch.Tensor,
                     camera: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The UNet's input and context for [B, 4, h, w] noisy latents: ``x`` = [z_t, latent of the source]
        on 8 channels, ``ctx`` = cc_projection([CLIP(source), camera]) [B, 1, D] (Zero-1-to-3, Sec. 3.2).

        ``keep`` [B] (bool): rows where it is False are the unconditional branch (zero context, zero
        latent), as classifier-free guidance runs them and the trainer drops the condition.
        """
        p = self.parts
        ctx = p.cc_projection(torch.cat([c_crossattn, camera], dim=-1).to(p.cc_projection.weight.dtype))
        if keep is not None:
            ctx = ctx * keep.view(-1, 1, 1).to(ctx.dtype)
            c_concat = c_concat * keep.view(-1, 1, 1, 1).to(c_concat.dtype)
        return torch.cat([latents_noisy, c_concat.to(latents_noisy.dtype)], dim=1), ctx

    def encode_images(self, images: torch.Tensor, size: int | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, 3, H, W] renders in [0, 1] -> [B, 4, h, w] latents (posterior sample, shifted and scaled:
        :mod:`priors.latents`), differentiable.

        Renders are resized to ``size`` x ``size`` first; ``None`` means :attr:`cond_size` (the
        reference's side, by default :attr:`native_size`: 256 for Zero-1-to-3), whatever the render size.
        """
        size = self.cond_size if size is None else size
        if tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(images, (size, size), mode="bilinear", align_corners=False)
        vae = self.parts.vae
        z = vae.encode((images * 2.0 - 1.0).to(vae.dtype)).latent_dist.sample(generator)
        return to_latents(vae, z.float())

    @torch.no_grad()
    def predict_noise(self, latents_noisy: torch.Tensor, t: torch.Tensor, camera: torch.Tensor,
                      guidance_scale: float) -> torch.Tensor:
        """Guided noise prediction for [B, 4, h, w] noisy latents seen from ``camera`` [B, 1, 4]."""
        if self.c_crossattn is None:
            raise RuntimeError("Zero123SDS.set_reference must be called before guidance")
        p, n = self.parts, latents_noisy.shape[0]
        keep = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]).to(latents_noisy.device)
        x, ctx = self.model_inputs(torch.cat([latents_noisy] * 2), self.c_crossattn.expand(2 * n, -1, -1),
                                   self.c_concat.expand(2 * n, -1, -1, -1), torch.cat([camera] * 2), keep)
        eps = p.unet(x.to(p.unet.dtype), torch.cat([t] * 2), encoder_hidden_states=ctx.to(p.unet.dtype)).sample
        eps_uncond, eps_cond = eps.float().chunk(2)
        # 3. classifier-free guidance, standard form (as the release's Zero-1-to-3 guidance)
        return sds.classifier_free_guidance(eps_cond, eps_uncond, guidance_scale)

    def __call__(self, images: torch.Tensor, elevation: torch.Tensor, azimuth: torch.Tensor, distance: torch.Tensor,
                 t_range: tuple[float, float], guidance_scale: float, encode_size: int | None = None,
                 noise: torch.Tensor | None = None, t: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> sds.SDSOutput:
        """SDS on [B, 3, H, W] renders in [0, 1] from cameras given in degrees / scene units ([B] each).

        ``encode_size`` None encodes at :attr:`cond_size` (see :meth:`encode_images`).
        """
        latents = self.encode_images(images, encode_size, generator)
        if t is None:
            t = sds.sample_timesteps(latents.shape[0], t_range, self.num_train_timesteps, generator, latents.device)
        if noise is None:
            noise = randn_tensor(latents.shape, generator, latents.device)
        latents_noisy = self.parts.scheduler.add_noise(latents.detach(), noise, t)
        camera = relative_camera(elevation, azimuth, distance, self.ref).to(latents.device)
        noise_pred = self.predict_noise(latents_noisy, t, camera, guidance_scale)
        return sds.sds_from_prediction(latents, noise, noise_pred, t, self.parts.scheduler.alphas_cumprod,
                                       self.weighting)
