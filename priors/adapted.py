"""Normal- and depth-adapted guidance for stage 2 (HumanNorm, arXiv 2310.01406).

HumanNorm's normal-adapted and depth-adapted models are SD 1.5 pipelines fine-tuned to generate
normal maps and depth maps as images. Stage 2 renders the mesh's normal and depth maps, turns
them into such images here, and distils each model's score by SDS (:class:`StableDiffusionSDS`,
each with its own text encoder).
"""
from __future__ import annotations

import torch

from priors.config import Config
from priors.deferred import Deferred, resolve
from priors.prior_2d import StableDiffusionSDS
from priors.sds import SDSOutput
from priors.text import PromptEmbeddings


def normal_image(normal: torch.Tensor, mask: torch.Tensor, background: float = 0.0) -> torch.Tensor:
    """[B, 3, H, W] camera-space unit normals in [-1, 1] -> image in [0, 1], ``background`` outside the mask."""
    return mask * (normal * 0.5 + 0.5) + (1.0 - mask) * background


def depth_image(depth: torch.Tensor, mask: torch.Tensor, near_bright: bool = True, background: float = 0.0,
                eps: float = 1e-6) -> torch.Tensor:
    """[B, 1, H, W] depth -> [B, 3, H, W] image: min-max normalised inside the mask, per view.

    With ``near_bright`` the nearest point is 1 (disparity-like, as depth-conditioned SD models
    are trained); outside the mask the image is ``background``. Differentiable in ``depth``.
    """
    inside = mask > 0.5
    big = torch.finfo(depth.dtype).max
    lo = torch.where(inside, depth, big).amin(dim=(1, 2, 3), keepdim=True)
    hi = torch.where(inside, depth, -big).amax(dim=(1, 2, 3), keepdim=True)
    d = (depth - lo) / (hi - lo).clamp_min(eps)
    d = 1.0 - d if near_bright else d
    d = torch.where(inside, d, torch.full_like(d, background))
    return d.expand(-1, 3, -1, -1)


class AdaptedGuidance:
    """Normal-adapted and depth-adapted SDS.

    Args:
        normal: SDS with the normal-adapted SD 1.5 (its own VAE, text encoder, UNet), or a
            :class:`Deferred` loading it on first use.
        depth: SDS with the depth-adapted SD 1.5, or a :class:`Deferred`.
    """

    def __init__(self, normal: StableDiffusionSDS | Deferred[StableDiffusionSDS],
                 depth: StableDiffusionSDS | Deferred[StableDiffusionSDS]):
        self._normal, self._depth = normal, depth
        self._prompts: tuple[str, str] = ("", "")
        self._embeddings: dict[str, PromptEmbeddings] = {}

    def prepare(self, prompt: str, negative_prompt: str = "") -> None:
        """Set one avatar's prompt; each model embeds it with its own text encoder on first use."""
        self._prompts, self._embeddings = (prompt, negative_prompt), {}

    def _prepared(self, kind: str) -> PromptEmbeddings:
        if kind not in self._embeddings:
            self._embeddings[kind] = getattr(self, kind).embed(*self._prompts)
        return self._embeddings[kind]

    @property
    def normal(self) -> StableDiffusionSDS:
        """The normal-adapted model (loaded now if it was deferred)."""
        return resolve(self._normal)

    @property
    def depth(self) -> StableDiffusionSDS:
        """The depth-adapted model (loaded now if it was deferred)."""
        return resolve(self._depth)

    @classmethod
    def from_pretrained(cls, cfg: Config, device: torch.device | str) -> "AdaptedGuidance":
        """Both HumanNorm pipelines (each repository holds its full SD 1.5 layout), standard CFG, each
        loaded on first use: a run that weights one of them 0 throughout never needs its weights."""
        def load(key: str):
            return Deferred(lambda: StableDiffusionSDS.from_pretrained(cfg, device, key, key, "standard"))

        return cls(load("normal_adapted"), load("depth_adapted"))

    def embed(self, prompt: str, negative_prompt: str = "") -> tuple[PromptEmbeddings, PromptEmbeddings]:
        """(normal, depth) prompt embeddings, each from its own model's text encoder (this loads both;
        with one of them unused, call ``self.normal.embed`` or ``self.depth.embed`` alone)."""
        return self.normal.embed(prompt, negative_prompt), self.depth.embed(prompt, negative_prompt)

    def normal_sds(self, normal: torch.Tensor, mask: torch.Tensor, embeddings: PromptEmbeddings | None,
                   t_range: tuple[float, float], guidance_scale: float, encode_size: int | None = 512,
                   generator: torch.Generator | None = None, cameras: object | None = None) -> SDSOutput:
        """SDS of the normal-adapted model on rendered camera-space normals [B, 3, H, W] in [-1, 1] with mask
        [B, 1, H, W]. ``embeddings`` None: the prompt given to :meth:`prepare`. ``cameras`` is unused here
        (see :meth:`priors.hybrid.HybridSDS.__call__`)."""
        embeddings = self._prepared("normal") if embeddings is None else embeddings
        return self.normal(normal_image(normal, mask), embeddings, t_range, guidance_scale, encode_size,
                           generator=generator)

    def depth_sds(self, depth: torch.Tensor, mask: torch.Tensor, embeddings: PromptEmbeddings | None,
                  t_range: tuple[float, float], guidance_scale: float, encode_size: int | None = 512,
                  generator: torch.Generator | None = None, cameras: object | None = None) -> SDSOutput:
        """SDS of the depth-adapted model on rendered depth [B, 1, H, W] with mask [B, 1, H, W]
        (``embeddings`` and ``cameras``: as in :meth:`normal_sds`)."""
        embeddings = self._prepared("depth") if embeddings is None else embeddings
        return self.depth(depth_image(depth, mask), embeddings, t_range, guidance_scale, encode_size,
                          generator=generator)
