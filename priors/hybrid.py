"""Hybrid SDS: the weighted sum of the 2D-prior and 3D-prior terms (GeneMAN Sec. 3.2), and the
paper's multi-view trick: several views share one noise sample and are tiled into one image for
one denoiser call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from priors.deferred import Deferred, resolve
from priors.prior_2d import StableDiffusionSDS
from priors.prior_3d import Zero123SDS
from priors.sds import SDSOutput
from priors.text import PromptEmbeddings


@dataclass
class Term:
    """One guidance term as a stage sets it at the current step."""

    weight: float
    """Loss weight (lambda); 0 skips the term without running its networks."""
    guidance_scale: float
    """Classifier-free guidance scale."""
    t_range: tuple[float, float]
    """(min, max) timestep fractions at this step."""
    encode_size: int | None = None
    """Renders are resized to this side before VAE encoding; None: the prior's own choice (2D prior:
    the render's size; 3D prior: its reference's side, by default the 256 its UNet was trained at)."""


@dataclass
class HybridOutput:
    """Both SDS terms and their weighted sum."""

    loss: torch.Tensor
    """weight_2d * loss_2d + weight_3d * loss_3d."""
    terms: dict[str, SDSOutput]
    """``sds`` (2D prior) and ``sds_3d`` (3D prior), for the terms that ran."""


def grid_shape(n_views: int) -> tuple[int, int]:
    """(rows, cols) of the most square grid holding exactly ``n_views`` tiles.

    Example:
        >>> grid_shape(4), grid_shape(2), grid_shape(6)
        ((2, 2), (1, 2), (2, 3))
    """
    rows = max(r for r in range(1, int(math.isqrt(n_views)) + 1) if n_views % r == 0)
    return rows, n_views // rows


def tile_views(x: torch.Tensor, n_views: int) -> torch.Tensor:
    """[G*n, C, H, W] -> [G, C, rows*H, cols*W]: each group of ``n_views`` views as one image."""
    rows, cols = grid_shape(n_views)
    g, c, h, w = x.shape[0] // n_views, *x.shape[1:]
    assert g * n_views == x.shape[0], f"{x.shape[0]} views do not split into groups of {n_views}"
    x = x.reshape(g, rows, cols, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(g, c, rows * h, cols * w)


def untile_views(x: torch.Tensor, n_views: int) -> torch.Tensor:
    """Inverse of :func:`tile_views`: [G, C, rows*H, cols*W] -> [G*n, C, H, W]."""
    rows, cols = grid_shape(n_views)
    g, c, hh, ww = x.shape
    x = x.reshape(g, c, rows, hh // rows, cols, ww // cols).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(g * n_views, c, hh // rows, ww // cols)


def shared_noise(groups: int, n_views: int, shape: tuple[int, int, int], generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Tiled noise [G, C, rows*h, cols*w] whose ``n_views`` tiles hold the same sample per group, drawn on
    ``device`` with diffusers' ``randn_tensor`` (a CPU generator draws on the CPU and is copied)."""
    eps = randn_tensor((groups, *shape), generator, torch.device(device))
    return tile_views(eps.repeat_interleave(n_views, dim=0), n_views)


def tiled_sds(prior: StableDiffusionSDS, images: torch.Tensor, embeddings: PromptEmbeddings, term: Term,
              n_views: int, generator: torch.Generator | None = None) -> SDSOutput:
    """2D-prior SDS with the multi-view trick.

    Steps: 1. resize each view to ``term.encode_size``; 2. tile each group of ``n_views`` views into
    one image; 3. encode; 4. one noise sample per group, repeated on every tile; 5. one guided
    UNet call per tiled image and the SDS gradient (DreamFusion eq. (3)) on the tiled latent.
    """
    if term.encode_size is not None:
        images = F.interpolate(images, (term.encode_size, term.encode_size), mode="bilinear", align_corners=False)
    tiled = tile_views(images, n_views)
    latents = prior.encode_images(tiled, size=None, generator=generator)
    rows, cols = grid_shape(n_views)
    c, h, w = latents.shape[1], latents.shape[2] // rows, latents.shape[3] // cols
    noise = shared_noise(latents.shape[0], n_views, (c, h, w), generator, latents.device)
    return prior.sds_latents(latents, embeddings, term.t_range, term.guidance_scale, noise=noise, generator=generator)


class HybridSDS:
    """Weighted 2D + 3D score distillation on the same renders.

    Args:
        prior_2d: SD 1.5-family SDS (GeneMAN 2D prior), or a :class:`Deferred` loading it.
        prior_3d: Zero-1-to-3 SDS (GeneMAN 3D prior) with its reference already set, or a
            :class:`Deferred`. A deferred prior is loaded when its term first has a non-zero weight.
    """

    def __init__(self, prior_2d: StableDiffusionSDS | Deferred[StableDiffusionSDS],
                 prior_3d: Zero123SDS | Deferred[Zero123SDS]):
        self._prior_2d, self._prior_3d = prior_2d, prior_3d
        self._prompts: tuple[str, str] = ("", "")
        self._embeddings: PromptEmbeddings | None = None
        self._reference: tuple[torch.Tensor, float, float, float] | None = None
        self._reference_set = False

    def prepare(self, prompt: str, negative_prompt: str, reference: torch.Tensor, elevation: float,
                azimuth: float, distance: float) -> None:
        """Set one avatar's prompt and reference photo [1, 3, H, W] in [0, 1] (white background) and its
        camera. The prompt is embedded when the 2D term first runs and the reference is given to the
        3D prior when the 3D term first runs, so a prior weighted 0 throughout is never loaded."""
        self._prompts, self._embeddings = (prompt, negative_prompt), None
        self._reference, self._reference_set = (reference, elevation, azimuth, distance), False

    def _prepared_embeddings(self) -> PromptEmbeddings:
        if self._embeddings is None:
            self._embeddings = self.prior_2d.embed(*self._prompts)
        return self._embeddings

    def _set_reference(self) -> None:
        if not self._reference_set and self._reference is not None:
            self.prior_3d.set_reference(*self._reference)
            self._reference_set = True

    @property
    def prior_2d(self) -> StableDiffusionSDS:
        """The 2D prior (loaded now if it was deferred)."""
        return resolve(self._prior_2d)

    @property
    def prior_3d(self) -> Zero123SDS:
        """The 3D prior (loaded now if it was deferred)."""
        return resolve(self._prior_3d)

    def __call__(self, images: torch.Tensor, embeddings: PromptEmbeddings | None, elevation: torch.Tensor,
                 azimuth: torch.Tensor, distance: torch.Tensor, term_2d: Term, term_3d: Term,
                 multiview_tiles: int = 1, generator: torch.Generator | None = None,
                 cameras: object | None = None) -> HybridOutput:
        """Hybrid SDS on [B, 3, H, W] renders in [0, 1] from cameras [B] (degrees, scene units).

        ``multiview_tiles > 1`` applies the multi-view trick to the 2D term (B must be a multiple);
        the 3D term is per view, since each view has its own relative camera. ``embeddings`` None
        uses the prompt given to :meth:`prepare`. ``cameras`` (the render cameras) is not used by the
        priors; it is part of the call so that a guidance that needs the whole camera (the
        benchmark's oracle) answers the same call.
        """
        if embeddings is None and term_2d.weight:
            embeddings = self._prepared_embeddings()
        if term_3d.weight:
            self._set_reference()
        terms: dict[str, SDSOutput] = {}
        loss = images.new_zeros(())
        if term_2d.weight:
            if multiview_tiles > 1:
                terms["sds"] = tiled_sds(self.prior_2d, images, embeddings, term_2d, multiview_tiles, generator)
            else:
                terms["sds"] = self.prior_2d(images, embeddings, term_2d.t_range, term_2d.guidance_scale,
                                             term_2d.encode_size, generator=generator)
            loss = loss + term_2d.weight * terms["sds"].loss
        if term_3d.weight:
            terms["sds_3d"] = self.prior_3d(images, elevation, azimuth, distance, term_3d.t_range,
                                            term_3d.guidance_scale, term_3d.encode_size, generator=generator)
            loss = loss + term_3d.weight * terms["sds_3d"].loss
        return HybridOutput(loss, terms)
