"""CLIP image embeddings for ``geneman eval``: the CLIP similarity of two images is the cosine of theirs.

**Model: ``openai/clip-vit-large-patch14``** (``priors.clip_eval``; ViT-L/14 at 224 px, embeddings
of 768 numbers), read as transformers' ``CLIPVisionModelWithProjection`` from the full CLIP
checkpoint (``config.json`` + ``model.safetensors``; the text tower's weights are not used).

Why this one. GeneMAN's release has no evaluation script. The scripts of the peers it builds on
and compares with differ: DreamCraft3D's ``metric_utils.py`` and stable-dreamfusion's
``all_metrics/metric_utils.py`` (Magic123's evaluation, "adapted from NeuralLift-360") construct
``CLIP(clip_name='laion/CLIP-ViT-bigG-14-laion2B-39B-b160k')`` (their header comment says ViT-H-14),
resize to 224 x 224 and normalise with CLIP's mean / std; the DreamGaussian-style ``cal_sim``
scripts use ``openai/clip-vit-large-patch14`` through ``CLIPProcessor``, as does torchmetrics'
``CLIPScore`` by default. We take ViT-L/14: its transformers files are known and single
(1.7 GB), it runs 120 views on a CPU in minutes (bigG is about 1.8 B parameters in its image tower
alone), and its preprocessing is the ``CLIPImageProcessor`` written below. Numbers are therefore
comparable with ViT-L/14 tables, not bigG ones; ``--set priors.clip_eval=ID`` names another
transformers-format CLIP holding one ``model.safetensors``.

Preprocessing, as ``CLIPImageProcessor`` of these models does it, in torch (no torchvision):

1. resize so that the shorter side is the model's ``image_size`` (224), the longer one
   ``int(224 * long / short)``, bicubic with antialiasing;
2. centre crop ``image_size`` x ``image_size`` (offsets ``(H - S) // 2``, ``(W - S) // 2``);
3. normalise with OpenAI CLIP's mean and std.

The processor resizes 8-bit images with PIL and rounds; here the image stays float, so the two
differ by about a grey level (``tests/priors/test_clip.py`` bounds it).

Example:
    >>> x = torch.rand(2, 3, 40, 50)
    >>> clip_preprocess(x, 32).shape
    torch.Size([2, 3, 32, 32])
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from priors.config import Config
from priors.memory import quiet_loading

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP's normalisation (transformers' ``OPENAI_CLIP_MEAN`` / ``OPENAI_CLIP_STD``), also LAION's."""


def clip_preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, 3, H, W] images in [0, 1] -> [B, 3, size, size] CLIP input (steps 1-3 of the module docstring)."""
    assert images.dim() == 4 and images.shape[1] == 3, f"expected [B, 3, H, W], got {tuple(images.shape)}"
    h, w = images.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    new_h, new_w = (size, new_long) if h <= w else (new_long, size)
    x = images.float()
    # 1. shorter side -> size, bicubic (PIL's filter is antialiased when shrinking; so is this)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, (new_h, new_w), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    # 2. centre crop
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[..., top:top + size, left:left + size]
    # 3. CLIP mean / std
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class CLIPImageEncoder(nn.Module):
    """Frozen CLIP image tower: [B, 3, H, W] images in [0, 1] -> [B, D] unit embeddings.

    Args:
        model: a ``transformers.CLIPVisionModelWithProjection`` (the real one, or a tiny one in tests).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.size = int(model.config.image_size)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length image embeddings ``[B, D]`` (the projection of the pooled CLS token)."""
        device = next(self.model.parameters()).device
        pixels = clip_preprocess(images.to(device), self.size)
        embeds = self.model(pixel_values=pixels).image_embeds.float()
        return F.normalize(embeds, dim=-1)

    @classmethod
    def from_pretrained(cls, cfg: Config, device: torch.device | str = "cpu") -> "CLIPImageEncoder":
        """Load ``cfg.clip_eval`` (the ``clip`` weight of :func:`priors.weights.all_weights`).

        Raises:
            priors.weights.MissingWeightError: a file is missing (names the id, file and folder).
        """
        from priors.weights import all_weights, resolve

        return cls.from_folder(resolve(cfg, all_weights(cfg)["clip"]), device)

    @classmethod
    def from_folder(cls, folder: str | Path, device: torch.device | str = "cpu") -> "CLIPImageEncoder":
        """The image tower of the CLIP checkpoint in ``folder``: a full ``CLIPModel`` (the Hub's
        layout) or a ``CLIPVisionModelWithProjection``.

        Raises:
            ValueError: ``config.json`` is not a CLIP model's (names the folder and its model_type).
        """
        from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModelWithProjection

        kind = json.loads((Path(folder) / "config.json").read_text()).get("model_type")
        with quiet_loading(errors_only=True):
            if kind == "clip":
                full = CLIPConfig.from_pretrained(str(folder))
                vision = full.vision_config
                vision.projection_dim = full.projection_dim  # a full CLIP keeps it at the top level
            elif kind == "clip_vision_model":
                vision = CLIPVisionConfig.from_pretrained(str(folder))
            else:
                raise ValueError(f"{folder}/config.json is a {kind!r} model, not CLIP (clip or clip_vision_model); "
                                 "set priors.clip_eval to a CLIP checkpoint in transformers format")
            model = CLIPVisionModelWithProjection.from_pretrained(str(folder), config=vision, use_safetensors=True)
        return cls(model.to(device))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of embeddings ``a`` [N, D] with ``b`` [N, D] or [1, D] -> [N].

    Example:
        >>> cosine(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[2.0, 0.0]])).tolist()
        [1.0, 0.7071067690849304]
    """
    return F.cosine_similarity(a.float(), b.float().expand_as(a), dim=-1)
