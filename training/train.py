"""The prior trainers: ``geneman prior train-2d`` (an SD-architecture UNet on captioned images) and
``geneman prior train-3d`` (the Zero-1-to-3 architecture on view pairs), the paper's Sec. 3.1 recipe.

A step, both kinds (diffusers' training scripts' epsilon objective, DDPM eq. (14)):

1. draw the batch: each row from the general-data set with probability ``general_ratio``, else from
   the human data (the paper mixes general data into both priors' fine-tuning);
2. encode the targets with the frozen VAE (a posterior sample, shifted and scaled to zero mean and unit
   variance per channel: :mod:`priors.latents`), draw t ~ U{0..T-1} and
   eps ~ N(0, 1), and noise: z_t = sqrt(a_t) z + sqrt(1 - a_t) eps;
3. condition, and drop the condition with probability ``uncond_prob`` (classifier-free guidance needs
   the unconditional model): 2D, the caption's CLIP text embedding (dropped: the empty prompt);
   3D, :meth:`priors.prior_3d.Zero123SDS.model_inputs` of the source's CLIP embedding, VAE latent and
   the relative camera (dropped: zero context and zero latent, as guidance runs the unconditional branch);
4. loss = || eps_theta(z_t, t, c) - eps ||^2; AdamW on the UNet (3D: and ``cc_projection``, and a new
   tiny image encoder), the learning rate warmed up and then cosine-decayed (:func:`lr_at`), an
   exponential moving average of the weights kept (diffusers' ``EMAModel``) and saved; the VAE, text
   encoder and a pretrained image encoder stay frozen.

Every random number of step ``s`` comes from a generator seeded by (seed, s, process), so a run
stopped and resumed from a checkpoint (model, optimiser, average, loss log) continues to the same bytes. The
loop is the stages' (:class:`stages.loop.Checkpoint` saves and reports progress); several processes
(``accelerate launch``, torchrun, Slurm) go through Hugging Face Accelerate, each drawing its own rows.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from priors.prior_2d import StableDiffusionSDS, load_sd_parts, save_sd_parts
from priors.prior_3d import Zero123SDS
from priors.sapiens import normalise
from priors.text import PromptEncoder
from priors.zero123_parts import Zero123Parts
from stages.loop import Checkpoint
from stages.render.export import atomic_write, png_bytes
from training.datasets import CaptionedImages, ControlledImages, MapImages, ViewPairs
from training.novel_views import novel_views

log = logging.getLogger("geneman")

KINDS = ("2d", "3d", "vae", "controlnet", "depth", "normal")
ESTIMATORS = ("depth", "normal")
"""Kinds that train a :class:`priors.estimator.MapEstimator` (regression, no diffusion)."""
DEFAULT_LR = {"2d": 1e-5, "3d": 1e-4, "vae": 1e-4, "controlnet": 1e-5, "depth": 1e-3, "normal": 1e-3}
"""AdamW learning rates: the paper's for the priors (2D 1e-5, 3D 1e-4), diffusers' example scripts' order
for the VAE and the ControlNet, a small CNN's usual 1e-3 for the estimators."""
KL_WEIGHT = 1e-6
"""Weight of the VAE's KL term against the reconstruction term, both summed over an image (SD's autoencoder
recipe, LDM's ``kl_weight``): :func:`vae_loss`."""
TRAIN_JSON = "train.json"
"""Beside the weights: the config, the data's manifest, the loss log, timings, library versions."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run (the ``geneman prior train-2d|train-3d`` options)."""

    kind: str
    """``2d``, ``3d``, ``vae``, ``controlnet``, ``depth`` or ``normal`` (:data:`KINDS`)."""
    steps: int = 1000
    """Optimisation steps."""
    batch_size: int = 8
    """Rows per step and process."""
    lr: float = 0.0
    """AdamW learning rate; 0: the paper's for the kind (:data:`DEFAULT_LR`)."""
    weight_decay: float = 1e-2
    """AdamW weight decay (diffusers' scripts' default)."""
    max_grad_norm: float = 1.0
    """Gradient norm clip (diffusers' scripts' default)."""
    uncond_prob: float = 0.1
    """Probability of dropping a row's condition (classifier-free guidance)."""
    general_ratio: float = 0.0
    """Probability that a row comes from the general-data set (needs one)."""
    init: str = "tiny"
    """``tiny`` (from scratch, :mod:`priors.tiny`'s architecture at the data's size) or a folder of
    weights to fine-tune (2D: an SD 1.5 diffusers folder; 3D: a Zero-1-to-3 diffusers folder; VAE: an SD
    folder; ControlNet: the 2D prior it steers, an SD folder with ``unet/``, required; depth / normal: an
    estimator folder of that kind)."""
    decoder_only: bool = False
    """VAE with ``init`` a folder: train the decoder alone (the encoder, so every latent and every prior
    trained on them, stays as it is; the latent scale is kept), as SD's ft-MSE autoencoder was made."""
    base: str = ""
    """With ``init`` tiny: an SD-layout folder (a ``train-vae`` output) whose VAE, text encoder, tokenizer
    and scheduler are used, frozen, instead of new random ones (the 3D prior takes its VAE)."""
    size: int = 0
    """Image side trained at; 0: the data's (its manifest's ``size``)."""
    save_every: int = 100
    """Checkpoint every this many steps (and at the end, and on a stop signal)."""
    sample_every: int = 0
    """Write sample images every this many steps (0: only at the end)."""
    seed: int = 0
    """Seed of the batches, noise, timesteps and condition drops."""
    warmup: float = 0.05
    """Linear learning-rate warm-up from 0 over this fraction of ``steps`` (transformers' ``warmup_ratio``;
    diffusers' scripts' ``lr_warmup_steps``): :func:`lr_at`."""
    lr_schedule: str = "cosine"
    """After the warm-up: ``constant`` or ``cosine`` (half a cosine down to 0 at ``steps``, diffusers'
    ``get_cosine_schedule_with_warmup``): :func:`lr_at`."""
    ema_decay: float = 0.9999
    """Largest decay of the exponential moving average of the trained weights (diffusers' ``EMAModel`` with
    its warm-up: decay 1 - (1 + step)^(-2/3), so about 0.99 at step 1000); the weights saved are the
    average. 0: no average, the last step's weights are saved."""

    @property
    def learning_rate(self) -> float:
        return self.lr or DEFAULT_LR[self.kind]


LR_SCHEDULES = ("constant", "cosine")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of ``step`` (0-based): linear warm-up over the first ``cfg.warmup`` of the steps
    (from lr / warm-up steps at step 0), then constant or half a cosine to 0 at ``cfg.steps`` (diffusers'
    ``get_constant_schedule_with_warmup`` / ``get_cosine_schedule_with_warmup``, as a pure function of the step).

    Example:
        >>> cfg = TrainConfig("3d", steps=100, lr=1.0, warmup=0.1)
        >>> [round(lr_at(s, cfg), 3) for s in (0, 4, 9, 10, 99)]
        [0.1, 0.5, 1.0, 1.0, 0.0]
    """
    warm = int(cfg.warmup * cfg.steps)
    if step < warm:
        return cfg.learning_rate * (step + 1) / warm
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    progress = (step - warm) / max(1, cfg.steps - warm - 1)
    return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def check_config(cfg: TrainConfig, has_general: bool) -> None:
    """``ValueError`` (one line) for options that cannot work."""
    if cfg.kind not in KINDS:
        raise ValueError(f"kind {cfg.kind!r}: expected one of {', '.join(KINDS)}")
    if cfg.kind == "controlnet" and cfg.init == "tiny":
        raise ValueError("train-controlnet needs --init PRIOR_2D: the 2D prior it steers (a train-2d output or "
                         "an SD 1.5 folder with unet/)")
    if cfg.decoder_only and (cfg.kind != "vae" or cfg.init == "tiny"):
        raise ValueError("--decoder-only goes with train-vae --init DIR (a trained VAE whose decoder to train)")
    if cfg.base and cfg.init != "tiny":
        raise ValueError(f"--base {cfg.base} goes with --init tiny only (a fine-tuned folder brings its own VAE)")
    for name in ("steps", "batch_size", "save_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(cfg, name)} must be at least 1")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule {cfg.lr_schedule!r}: expected one of {', '.join(LR_SCHEDULES)}")
    if not (0.0 <= cfg.warmup < 1.0 and 0.0 <= cfg.ema_decay < 1.0):
        raise ValueError(f"warm-up {cfg.warmup} and EMA decay {cfg.ema_decay} must be in [0, 1)")
    if cfg.sample_every < 0 or cfg.lr < 0 or cfg.weight_decay < 0 or cfg.max_grad_norm <= 0:
        raise ValueError("--sample-every, --lr and --weight-decay must not be negative, "
                         "--max-grad-norm must be positive")
    for name in ("uncond_prob", "general_ratio"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(cfg, name)} must be in [0, 1]")
    if cfg.general_ratio > 0 and not has_general:
        raise ValueError(f"--general-ratio {cfg.general_ratio} needs a general-data folder (--general DIR)")
    if cfg.size and (cfg.size < 16 or cfg.size % 8):
        raise ValueError(f"--size {cfg.size} must be a multiple of 8, at least 16")
    if not 0 <= cfg.seed < 2 ** 63:
        raise ValueError(f"seed {cfg.seed} is out of range; give 0 to 2^63 - 1")


def data_manifest(folder: Path) -> dict:
    """The ``manifest.json`` of a ``geneman data render`` folder ({} for a plain image folder)."""
    path = Path(folder) / "manifest.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read it ({e}); render the data again") from None


# --- the networks ---------------------------------------------------------------------------------

def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    module.requires_grad_(False)
    return module.eval()


def _vae_scale(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def base_parts(base: str, size: int, seed: int) -> dict:
    """The frozen SD parts of a from-scratch prior: new tiny ones for ``size``-pixel images, or those of
    the SD-layout folder ``base``: ``{"vae", "text", "scheduler"}``."""
    from priors import tiny

    if not base:
        return {"vae": tiny.vae(seed, sample_size=size), "scheduler": tiny.scheduler(),
                "text": PromptEncoder(tiny.tokenizer(), tiny.text_encoder(seed))}
    parts = load_sd_parts(_weights_folder(base, ("vae", "text_encoder", "tokenizer", "scheduler"), "--base"))
    return {"vae": parts["vae"], "scheduler": parts["scheduler"],
            "text": PromptEncoder(parts["tokenizer"], parts["text_encoder"])}


def build_2d(init: str, size: int, seed: int, base: str = "") -> StableDiffusionSDS:
    """The 2D prior's networks: ``tiny`` from scratch for ``size``-pixel images (frozen parts from
    ``base`` when given), or an SD diffusers folder."""
    if init == "tiny":
        from priors import tiny

        frozen = base_parts(base, size, seed)
        vae, text, scheduler = frozen["vae"], frozen["text"], frozen["scheduler"]
        unet = tiny.unet(4, seed, sample_size=size // _vae_scale(vae))
    else:
        root = _weights_folder(init, ("vae", "text_encoder", "tokenizer", "scheduler", "unet"))
        parts = load_sd_parts(root, root / "unet")
        vae, unet, scheduler = parts["vae"], parts["unet"], parts["scheduler"]
        text = PromptEncoder(parts["tokenizer"], parts["text_encoder"])
    _frozen(vae), _frozen(text.text_encoder)
    return StableDiffusionSDS(vae, unet.train(), text, scheduler)


def build_3d(init: str, size: int, seed: int, base: str = "") -> Zero123SDS:
    """The 3D prior's networks: ``tiny`` from scratch for ``size``-pixel images (the VAE and scheduler
    from ``base`` when given), or a Zero-1-to-3 diffusers folder.

    The VAE is frozen; so is a fine-tuned model's image encoder (a pretrained CLIP, as Zero-1-to-3 keeps
    it), but a new tiny encoder is trained with the UNet: frozen at its random initialisation, it gives
    nearly the same embedding for every source, and the context token would carry the camera alone."""
    if init == "tiny":
        from priors import tiny

        frozen = base_parts(base, size, seed)
        vae = frozen["vae"]
        parts = Zero123Parts(tiny.unet(8, seed, sample_size=size // _vae_scale(vae)), vae, tiny.image_encoder(seed),
                             tiny.cc_projection(seed), frozen["scheduler"])
        parts.image_encoder.train()
    else:
        parts = Zero123Parts.from_pretrained(_weights_folder(init, ("unet", "vae", "image_encoder", "cc_projection",
                                                                    "scheduler")))
        _frozen(parts.image_encoder)
    _frozen(parts.vae)
    parts.unet.train()
    return Zero123SDS(parts)


class VAEBuild:
    """The autoencoder being trained, with the text encoder, tokenizer and scheduler saved beside it
    (the output is a whole SD-layout base for the other trainers' ``--base`` and a run's ``priors.sd15``)."""

    def __init__(self, init: str, size: int, seed: int):
        from diffusers import AutoencoderKL

        frozen = base_parts("" if init == "tiny" else init, size, seed)
        if init != "tiny":
            frozen["vae"] = AutoencoderKL.from_pretrained(Path(init) / "vae", local_files_only=True)
        self.vae, self.text, self.scheduler = frozen["vae"].train(), frozen["text"], frozen["scheduler"]
        _frozen(self.text.text_encoder)


def build_vae(init: str, size: int, seed: int, base: str = "") -> VAEBuild:
    """The VAE trainer's networks (``init`` tiny: a new :func:`priors.tiny.vae` for ``size``-pixel images)."""
    return VAEBuild(init, size, seed)


def build_controlnet(init: str, size: int, seed: int, base: str = "") -> StableDiffusionSDS:
    """The ControlNet trainer's networks: the 2D prior of folder ``init``, frozen, and a ControlNet made
    from its UNet (diffusers' ``ControlNetModel.from_unet``: the UNet's encoder copied, zero output
    convolutions), its conditioning embedding downsampling as the VAE does; ``prior.controlnet``."""
    from diffusers import ControlNetModel

    prior = build_2d(init, size, seed)
    _frozen(prior.unet)
    steps = int(math.log2(_vae_scale(prior.vae)))
    channels = (16, 32, 96, 256)[: steps + 1]
    torch.manual_seed(seed)
    prior.controlnet = ControlNetModel.from_unet(prior.unet, conditioning_embedding_out_channels=channels).train()
    return prior


class EstimatorBuild:
    """A depth or normal estimator being trained (:class:`priors.estimator.MapEstimator`): ``tiny`` a new
    one, seeded, or the estimator folder ``init`` to train on."""

    def __init__(self, kind: str, init: str):
        from priors.estimator import CHANNELS, WEIGHTS_NAME, MapEstimator, load_estimator

        if init == "tiny":
            self.net = MapEstimator(out_channels=CHANNELS[kind])
        else:
            self.net = load_estimator(Path(init) / WEIGHTS_NAME, "cpu", kind, f"--init of train-{kind}")
        self.net.train()


def build_estimator(kind: str):
    def build(init: str, size: int, seed: int, base: str = "") -> EstimatorBuild:
        torch.manual_seed(seed)
        return EstimatorBuild(kind, init)

    build.__doc__ = f"The {kind} estimator's network (:class:`EstimatorBuild`)."
    return build


BUILDERS = {"2d": build_2d, "3d": build_3d, "vae": build_vae, "controlnet": build_controlnet,
            "depth": build_estimator("depth"), "normal": build_estimator("normal")}


def _weights_folder(init: str, subfolders: tuple[str, ...], option: str = "--init") -> Path:
    root = Path(init)
    missing = [s for s in subfolders if not (root / s).is_dir()]
    if missing:
        what = "`tiny` or a diffusers folder" if option == "--init" else "a diffusers folder"
        raise ValueError(f"{root}: {option} must be {what} with {', '.join(subfolders)}; "
                         f"missing {', '.join(missing)}")
    return root


class Zero123Net(torch.nn.Module):
    """The trained part of the 3D prior as one module (the UNet, ``cc_projection`` and, when it is trained,
    the image encoder), so that one DistributedDataParallel wraps them; its forward embeds the source
    (:meth:`Zero123SDS.image_embedding`), then :meth:`Zero123SDS.model_inputs` and the UNet."""

    def __init__(self, prior: Zero123SDS):
        super().__init__()
        self.unet, self.cc_projection = prior.parts.unet, prior.parts.cc_projection
        if any(p.requires_grad for p in prior.parts.image_encoder.parameters()):
            self.image_encoder = prior.parts.image_encoder
        self._prior = [prior]  # not a submodule: the frozen encoders stay out of the optimiser and DDP

    def forward(self, latents_noisy, t, source, c_concat, camera, keep):
        c_crossattn = self._prior[0].image_embedding(source)
        x, ctx = self._prior[0].model_inputs(latents_noisy, c_crossattn, c_concat, camera, keep)
        return self.unet(x, t, encoder_hidden_states=ctx).sample


class VAENet(torch.nn.Module):
    """The autoencoder's training forward: images in [0, 1] and the posterior's noise -> (reconstruction
    in [-1, 1], KL per image), one module for DistributedDataParallel."""

    def __init__(self, vae, decoder_only: bool = False):
        super().__init__()
        self.vae, self.decoder_only = vae, decoder_only
        if decoder_only:
            vae.encoder.requires_grad_(False)
            if vae.quant_conv is not None:
                vae.quant_conv.requires_grad_(False)

    def forward(self, images, noise):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.decoder_only):
            posterior = self.vae.encode(images * 2 - 1).latent_dist
        z = posterior.mean + posterior.std * noise
        return self.vae.decode(z).sample, posterior.kl()


def vae_loss(recon: torch.Tensor, target: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
    """SD's autoencoder objective (LDM's ``LPIPSWithDiscriminator`` less its perceptual and GAN terms, squared
    error for its L1), per element: per image, the reconstruction error summed over the image's values plus
    :data:`KL_WEIGHT` times the KL divergence summed over its latent (``kl`` [B], diffusers'
    ``DiagonalGaussianDistribution.kl()``), divided by the values per image so that the first term is the
    per-pixel MSE. ``recon`` and ``target`` [B, 3, H, W] in [-1, 1].

    A KL summed over the latent beside a per-pixel mean would weigh the prior H x W x 3 times as much as SD
    does (12,288 times at 64 px), and the posterior of the channels it wins keeps unit variance: noise the
    diffusion models would then be trained on.

    Example:
        >>> recon, target = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
        >>> round(float(vae_loss(recon, target, torch.tensor([48.0, 48.0]))), 7)  # 0.25 + 1e-6 * 48 / 48
        0.250001
    """
    per_image = target[0].numel()
    return F.mse_loss(recon.float(), target.float()) + KL_WEIGHT * kl.float().mean() / per_image


class ControlNetNet(torch.nn.Module):
    """The ControlNet with the frozen UNet it steers (not a submodule: out of the optimiser and DDP)."""

    def __init__(self, prior: StableDiffusionSDS):
        super().__init__()
        self.controlnet = prior.controlnet
        self._unet = [prior.unet]

    def forward(self, latents_noisy, t, ctx, control):
        down, mid = self.controlnet(latents_noisy, t, encoder_hidden_states=ctx, controlnet_cond=control,
                                    return_dict=False)
        return self._unet[0](latents_noisy, t, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid).sample


def trainable(kind: str, prior, decoder_only: bool = False) -> torch.nn.Module:
    """The module the optimiser updates."""
    return {"2d": lambda: prior.unet, "3d": lambda: Zero123Net(prior), "vae": lambda: VAENet(prior.vae, decoder_only),
            "controlnet": lambda: ControlNetNet(prior), "depth": lambda: prior.net, "normal": lambda: prior.net}[kind]()


def save_weights(kind: str, prior, out: Path) -> None:
    """Write the weights folder the run's priors load (2D: the SD layout with ``unet/``; 3D: the
    Zero-1-to-3 diffusers layout), through a temporary folder so that a complete set replaces the old."""
    from transformers.utils import logging as hf_logging

    tmp = out / ".weights.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar per saved file is noise in a training log
    try:
        if kind == "2d":
            save_sd_parts(tmp, prior.vae, prior.text, prior.scheduler, prior.unet)
        elif kind == "vae":
            save_sd_parts(tmp, prior.vae, prior.text, prior.scheduler, None)
        elif kind == "controlnet":
            prior.controlnet.save_pretrained(tmp / "controlnet")
        elif kind in ESTIMATORS:
            prior.net.save_pretrained(tmp)
        else:
            prior.parts.save_pretrained(tmp)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    for sub in sorted(tmp.iterdir()):
        shutil.rmtree(out / sub.name, ignore_errors=True)
        sub.rename(out / sub.name)
    tmp.rmdir()


def use_line(kind: str, out: Path) -> str:
    """The ``--set`` options that make a run load this output as its prior."""
    out = Path(out).resolve()
    if kind == "2d":
        return f"--set priors.sd15={out} --set priors.geneman_repo={out} --set priors.prior_2d_subfolder=unet"
    if kind == "vae":
        return f"--set priors.sd15={out} (or --base {out} of train-2d / train-3d)"
    if kind == "controlnet":
        return f"--set priors.controlnet_normal={out / 'controlnet'}"
    if kind in ESTIMATORS:
        from priors.estimator import WEIGHTS_NAME

        return f"--set priors.sapiens_{kind}={out} --set priors.sapiens_{kind}_file={WEIGHTS_NAME}"
    return f"--set priors.prior_3d_diffusers={out}"


# --- the estimators' objective --------------------------------------------------------------------

def augment(images, maps, masks, kind: str, g: torch.Generator):
    """A random crop of each row (70-100 % of each side, anywhere: the estimator sees photos of other
    framings and aspect ratios squeezed to its 4:3 input) and a horizontal flip of half of them (a normal's
    x component changes sign), all resized back to the data's side."""
    n, s = len(images), images.shape[-1]
    out = [[], [], []]
    frac = 0.7 + 0.3 * torch.rand(n, 2, generator=g)
    corner = torch.rand(n, 2, generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    sign = torch.tensor([-1.0, 1.0, 1.0]).view(1, 3, 1, 1)
    for i in range(n):
        h, w = int(round(frac[i, 0].item() * s)), int(round(frac[i, 1].item() * s))
        y, x = int(corner[i, 0].item() * (s - h)), int(corner[i, 1].item() * (s - w))
        for k, t in enumerate((images, maps, masks)):
            crop = F.interpolate(t[i:i + 1, :, y:y + h, x:x + w], (s, s), mode="bilinear", align_corners=False)
            if flip[i]:
                crop = crop.flip(-1) * (sign if k == 1 and kind == "normal" else 1.0)
            out[k].append(crop)
    images, maps, masks = (torch.cat(v) for v in out)
    return images, maps, (masks > 0.5).float()


def estimator_loss(model, images, maps, masks, kind: str, dev) -> torch.Tensor:
    """Depth: the mean squared error inside the mask of each map less its mean there (the target is the
    depth image's far-larger [0, 1] range; the output is min-max normalised where used, so its offset
    does not count, and a fixed scale keeps its sign); normal: 1 - cosine inside the mask. Both at the
    estimator's output resolution."""
    pred = model(normalise(images.to(dev))).float()
    size = pred.shape[-2:]
    target = F.interpolate(maps.to(dev), size, mode="bilinear", align_corners=False)
    mask = (F.interpolate(masks.to(dev), size, mode="bilinear", align_corners=False) > 0.5).float()
    count = mask.sum(dim=(1, 2, 3)).clamp_min(1.0)
    if kind == "normal":
        cos = F.cosine_similarity(pred, target, dim=1, eps=1e-6)[:, None]
        return (((1 - cos) * mask).sum(dim=(1, 2, 3)) / count).mean()
    centred = []
    for v in (pred, target):
        mean = (v * mask).sum(dim=(1, 2, 3), keepdim=True) / count.view(-1, 1, 1, 1)
        centred.append((v - mean) * mask)
    return (((centred[0] - centred[1]) ** 2).sum(dim=(1, 2, 3)) / count).mean()


def map_picture(maps: torch.Tensor, masks: torch.Tensor, kind: str) -> torch.Tensor:
    """Maps ``[B, C, H, W]`` as images in [0, 1]: normals as normal images, depth min-max normalised in the
    mask, near bright (the pictures ``geneman data render`` writes)."""
    from priors.adapted import depth_image, normal_image

    if kind == "normal":
        return normal_image(F.normalize(maps, dim=1), masks)
    return depth_image(maps, masks)


# --- the loop -------------------------------------------------------------------------------------

class LossLog:
    """Every step's loss, kept in checkpoints (so a resumed run's log is the uninterrupted one's)."""

    def __init__(self, steps: int):
        self.loss = torch.full((steps,), float("nan"))

    def state_dict(self) -> dict:
        return {"loss": self.loss.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.loss.copy_(state["loss"])


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of every random number of ``step`` on process ``rank``."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def _rows(n: int, main: int, general: int, ratio: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices into the human data and into the general data for a batch of ``n``."""
    from_general = torch.rand(n, generator=g) < ratio if general else torch.zeros(n, dtype=torch.bool)
    k = int(from_general.sum())
    return torch.randint(main, (n - k,), generator=g), torch.randint(max(general, 1), (k,), generator=g)


class Trainer:
    """One training run of a prior.

    Args:
        cfg: the options.
        data: the human data (a ``geneman data render`` folder; a plain image folder for 2D too).
        out: the output folder (weights, ``train.json``, ``samples/``).
        general: the general-data folder, or None.
        accelerator: an ``accelerate.Accelerator`` (None: one made here; several processes come from the
            launcher's environment).
        command: the command line, recorded in ``train.json``.
    """

    def __init__(self, cfg: TrainConfig, data: Path, out: Path, general: Path | None = None, accelerator=None,
                 command: list[str] | None = None):
        check_config(cfg, general is not None)
        self.command = command or []
        from accelerate import Accelerator

        self.cfg, self.data, self.out, self.general = cfg, Path(data), Path(out), general
        self.manifest = data_manifest(self.data)
        self.size = cfg.size or int(self.manifest.get("size", 0)) or 64
        reader = {"2d": CaptionedImages, "vae": CaptionedImages, "3d": ViewPairs, "controlnet": ControlledImages,
                  "depth": partial(MapImages, kind="depth"), "normal": partial(MapImages, kind="normal")}[cfg.kind]
        self.dataset = reader(self.data, self.size)
        self.general_set = reader(general, self.size) if general is not None else None
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.prior = BUILDERS[cfg.kind](cfg.init, self.size, cfg.seed, cfg.base)
        self.model = trainable(cfg.kind, self.prior, cfg.decoder_only)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.ema = None
        if cfg.ema_decay:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=cfg.ema_decay, use_ema_warmup=True)
        self.losses = LossLog(cfg.steps)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes

    def objects(self) -> dict[str, Any]:
        """What a checkpoint holds."""
        return {"model": self.model, "optimizer": self.optimizer, "losses": self.losses,
                **({"ema": self.ema} if self.ema is not None else {})}

    def loss(self, model, step: int) -> torch.Tensor:
        """The loss of ``step`` on this process (module doc, steps 1-4)."""
        cfg, g, dev = self.cfg, step_generator(self.cfg.seed, step, self.rank), self.accelerator.device
        n_general = len(self.general_set) if self.general_set is not None else 0
        main, extra = _rows(cfg.batch_size, len(self.dataset), n_general, cfg.general_ratio, g)
        batches = [self.dataset.batch(main)] + ([self.general_set.batch(extra)] if len(extra) else [])
        if cfg.kind in ESTIMATORS:
            images, maps, masks = (torch.cat([b[i] for b in batches]) for i in range(3))
            return estimator_loss(model, *augment(images, maps, masks, cfg.kind, g), cfg.kind, dev)
        if cfg.kind == "vae":
            images = torch.cat([b[0] for b in batches]).to(dev)
            latent = self.size // self.prior_scale
            noise = torch.randn((len(images), self.prior.vae.config.latent_channels, latent, latent), generator=g)
            recon, kl = model(images, noise.to(dev))
            return vae_loss(recon, images * 2 - 1, kl)
        sched = self.prior.parts.scheduler if cfg.kind == "3d" else self.prior.scheduler
        with torch.no_grad():
            if cfg.kind in ("2d", "controlnet"):
                images = torch.cat([b[0] for b in batches]).to(dev)
                captions = [c for b in batches for c in b[1]]
                latents = self.prior.encode_images(images, None, g)
            else:
                source, target, camera = (torch.cat([b[i] for b in batches]).to(dev) for i in range(3))
                latents = self.prior.encode_images(target, None, g)
                c_concat = self.prior.source_latent(source)
        noise = torch.randn(latents.shape, generator=g).to(dev)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(latents),), generator=g).to(dev)
        keep = (torch.rand(len(latents), generator=g) >= cfg.uncond_prob).to(dev)
        noisy = sched.add_noise(latents, noise, t)
        if cfg.kind in ("2d", "controlnet"):
            with torch.no_grad():
                ctx = self.prior.text.encode([c if k else "" for c, k in zip(captions, keep.tolist())])
            if cfg.kind == "2d":
                eps = model(noisy, t, encoder_hidden_states=ctx).sample
            else:
                eps = model(noisy, t, ctx, torch.cat([b[2] for b in batches]).to(dev))
        else:
            eps = model(noisy, t, source, c_concat, camera, keep)
        return F.mse_loss(eps.float(), noise)

    def run(self, ckpt: Checkpoint) -> dict:
        """Train from the newest checkpoint in ``ckpt`` to ``cfg.steps``; write the weights, samples and
        ``train.json`` (main process). Returns the summary written to ``train.json``."""
        cfg, acc = self.cfg, self.accelerator
        start = ckpt.resume(self.objects())
        model, optimizer = acc.prepare(self.model, self.optimizer)
        t0 = time.monotonic()
        for step in range(start, cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss = self.loss(model, step)
            acc.backward(loss)
            acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.step(self.params)
            value = acc.reduce(loss.detach(), reduction="mean") if self.world > 1 else loss.detach()
            self.losses.loss[step] = float(value)
            done = step + 1
            if acc.is_main_process and cfg.sample_every and done % cfg.sample_every == 0 and done < cfg.steps:
                self.write_samples(done)
            ckpt.step_done(done, {"mse": self.losses.loss[step]}, self.objects())
        acc.wait_for_everyone()
        if self.ema is not None:
            self.ema.copy_to(self.params)  # the average is what is measured, sampled and saved
        if cfg.kind == "vae" and not cfg.decoder_only:
            self.set_latent_scale()
        elif cfg.kind == "vae":
            self.latent_scale = self.prior.vae.config.scaling_factor
            self.latents_mean = self.prior.vae.config.get("latents_mean")
        summary = self.summary(start, time.monotonic() - t0)
        if acc.is_main_process:
            save_weights(cfg.kind, self.prior, self.out)
            self.write_samples(cfg.steps)
            atomic_write(self.out / TRAIN_JSON, (json.dumps(summary, indent=1) + "\n").encode())
        acc.wait_for_everyone()
        return summary

    @torch.no_grad()
    def set_latent_scale(self, rows: int = 256) -> float:
        """Set the VAE's latent map (:mod:`priors.latents`) from the posterior samples ``z`` of up to
        ``rows`` data images: ``latents_mean`` their per-channel mean, ``scaling_factor`` 1 / the std of
        ``z - latents_mean`` (how SD's 0.18215 was chosen, with the per-channel centring SDXL-style
        configs hold), so that the latents the diffusion models train on have zero mean and unit variance,
        as their samplers' start from standard normal noise assumes. Deterministic: fixed rows, a generator
        from the seed."""
        vae, g = self.prior.vae.eval(), torch.Generator().manual_seed(self.cfg.seed)
        images = self.dataset.batch(torch.arange(min(rows, len(self.dataset))))[0].to(self.accelerator.device)
        posterior = vae.encode(images * 2 - 1).latent_dist
        z = (posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g).to(posterior.mean)).float()
        mean = z.mean(dim=(0, 2, 3))
        scale = round(1.0 / float((z - mean.view(1, -1, 1, 1)).std()), 5)
        self.latents_mean = [round(float(m), 5) for m in mean]
        vae.register_to_config(scaling_factor=scale, latents_mean=self.latents_mean, latents_std=None,
                               shift_factor=None)
        self.latent_scale = scale
        return scale

    def summary(self, start: int, seconds: float) -> dict:
        """What ``train.json`` records."""
        import diffusers
        import transformers

        loss = self.losses.loss
        first, last = loss[: min(20, len(loss))], loss[-min(20, len(loss)):]
        return {"trainer": "training.train", "config": asdict(self.cfg), "learning_rate": self.cfg.learning_rate,
                "size": self.size, "processes": self.world, "data": str(self.data), "general": str(self.general or ""),
                "data_manifest": {k: v for k, v in self.manifest.items() if k != "subjects"},
                "data_rows": len(self.dataset), "general_rows": len(self.general_set) if self.general_set else 0,
                "resumed_at": start, "seconds_this_call": round(seconds, 2),
                "loss_first_20": _mean(first), "loss_last_20": _mean(last),
                "loss": [None if math.isnan(v) else round(v, 6) for v in loss.tolist()],
                "libraries": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                              "transformers": transformers.__version__},
                "use": use_line(self.cfg.kind, self.out), "command": self.command,
                **({"scaling_factor": self.latent_scale, "latents_mean": self.latents_mean}
                   if self.cfg.kind == "vae" else {})}

    # --- samples ----------------------------------------------------------------------------------

    @torch.no_grad()
    def write_samples(self, step: int) -> Path:
        """``samples/step_XXXXXXXX.png``: 2D, four captions' samples; 3D, rows of source | sample | truth
        for up to four pairs. DDIM, 20 steps, from a fixed seed (so steps compare); RNG-neutral."""
        if self.cfg.kind in ESTIMATORS:
            images, maps, masks = (v.to(self.accelerator.device) for v in self.dataset.batch(
                torch.arange(min(8, len(self.dataset)))))
            net = self.prior.net.eval()
            pred = F.interpolate(net(normalise(images)), images.shape[-2:], mode="bilinear",
                                 align_corners=False)
            net.train()
            return self._write_grid([images, map_picture(pred, masks, self.cfg.kind),
                                     map_picture(maps, masks, self.cfg.kind)], step)
        if self.cfg.kind == "vae":
            images = self.dataset.batch(torch.arange(min(8, len(self.dataset))))[0].to(self.accelerator.device)
            vae = self.prior.vae
            recon = (vae.decode(vae.encode(images * 2 - 1).latent_dist.mean).sample * 0.5 + 0.5).clamp(0, 1)
            return self._write_grid([images, recon], step)
        sched = self.prior.parts.scheduler if self.cfg.kind == "3d" else self.prior.scheduler
        ddim = DDIMScheduler.from_config(sched.config)
        ddim.set_timesteps(20)
        g = torch.Generator().manual_seed(self.cfg.seed)
        dev = self.accelerator.device
        latent = self.size // self.prior_scale
        if self.cfg.kind == "2d":
            captions = list(dict.fromkeys(self.dataset.captions))[:4]
            emb = self.prior.text.encode(captions + [""] * len(captions))
            x = torch.randn((len(captions), 4, latent, latent), generator=g).to(dev)
            for t in ddim.timesteps:
                eps = self.prior.unet(torch.cat([x] * 2), t, encoder_hidden_states=emb).sample
                c, u = eps.chunk(2)
                x = ddim.step(u + 5.0 * (c - u), t, x).prev_sample
            rows = [self.prior.decode_latents(x)]
        elif self.cfg.kind == "controlnet":
            idx = torch.arange(min(4, len(self.dataset)))
            truth, captions, control = self.dataset.batch(idx)
            emb = self.prior.text.encode(list(captions) + [""] * len(captions))
            control = torch.cat([control.to(dev)] * 2)
            net = ControlNetNet(self.prior)
            x = torch.randn((len(idx), 4, latent, latent), generator=g).to(dev)
            for t in ddim.timesteps:
                c, u = net(torch.cat([x] * 2), t, emb, control).chunk(2)
                x = ddim.step(u + 5.0 * (c - u), t, x).prev_sample
            rows = [control[: len(idx)], self.prior.decode_latents(x), truth.to(dev)]
        else:
            idx = torch.arange(min(4, len(self.dataset)))
            source, target, camera = (v.to(dev) for v in self.dataset.batch(idx))
            sample = novel_views(self.prior, source, camera, g, steps=20)
            size = sample.shape[-1]
            rows = [F.interpolate(v, (size, size), mode="area") for v in (source, sample, target)]
        return self._write_grid(rows, step)

    def _write_grid(self, rows: list[torch.Tensor], step: int) -> Path:
        return write_grid(rows, self.out / "samples" / f"step_{step:08d}.png")

    @property
    def prior_scale(self) -> int:
        return _vae_scale(self.prior.parts.vae if self.cfg.kind == "3d" else self.prior.vae)


def write_grid(rows: list[torch.Tensor], path: Path) -> Path:
    """One PNG of image rows (each [N, 3, S, S] in [0, 1], the same N and S), written atomically."""
    grid = torch.cat([torch.cat(list(r), dim=-1) for r in rows], dim=-2)  # [3, rows*S, cols*S]
    image = (grid.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, png_bytes(image))


def _mean(values: torch.Tensor) -> float | None:
    values = values[~torch.isnan(values)]
    return round(float(values.mean()), 6) if len(values) else None
