"""Sapiens depth and normal estimation for preprocess (Khirodkar et al., arXiv 2408.12569).

The released TorchScript files take a [B, 3, 1024, 768] image normalised with Sapiens' mean / std
(RGB, 0..255 scale) and return a lower-resolution map, resized back to the input here and masked.
"""
from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F

from priors.config import Config
from priors.estimator import load_estimator
from priors.weights import MissingWeightError, all_weights, resolve, verify_code_weight

log = logging.getLogger(__name__)

INPUT_SIZE = (1024, 768)
"""(height, width) the Sapiens TorchScript models take."""
MEAN = (123.5 / 255, 116.5 / 255, 103.5 / 255)
STD = (58.5 / 255, 57.0 / 255, 57.5 / 255)


def normalise(image: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` images in [0, 1] normalised with Sapiens' mean and std, as its models take them."""
    mean, std = (torch.tensor(v, device=image.device).view(1, 3, 1, 1) for v in (MEAN, STD))
    return (image - mean) / std


class SapiensEstimator:
    """A Sapiens TorchScript model with its pre- and post-processing.

    Args:
        module: the TorchScript module.
        kind: ``normal`` (3-channel output) or ``depth`` (1-channel).
        near_bright: depth is returned min-max normalised in the mask with the nearest point at 1.
    """

    def __init__(self, module: torch.nn.Module, kind: str, near_bright: bool = True):
        if kind not in ("normal", "depth"):
            raise ValueError(f"kind must be normal or depth, got {kind!r}")
        self.module, self.kind, self.near_bright = module, kind, near_bright

    @classmethod
    def from_pretrained(cls, cfg: Config, kind: str, device: torch.device | str) -> "SapiensEstimator":
        """Load ``cfg.sapiens_<kind>`` / ``cfg.sapiens_<kind>_file`` with ``torch.jit.load``, or, for a
        ``.safetensors`` file, the :class:`priors.estimator.MapEstimator` it holds (``geneman prior
        train-depth|train-normal``, the demo preset's bundled ones).

        A TorchScript file is code: it is loaded only when its sha256 is a released file's
        (:data:`priors.weights.PINNED_SHA256`), or with ``cfg.trust_weights``. The bytes hashed are
        the bytes loaded (one open file).

        Raises:
            UntrustedWeightError: the file is not a released one and ``cfg.trust_weights`` is off.
            ValueError: an estimator file that cannot be read, or of the other kind.
        """
        root = resolve(cfg, all_weights(cfg)[f"sapiens_{kind}"])
        path = root / getattr(cfg, f"sapiens_{kind}_file")
        if path.suffix == ".safetensors":  # a geneman estimator: weights only, nothing to trust
            return cls(load_estimator(path, device, kind, f"priors.sapiens_{kind}"), kind)
        with open(path, "rb") as f:
            verify_code_weight(f, path, cfg.trust_weights)
            with warnings.catch_warnings():  # the released files are TorchScript, deprecated in recent torch
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(f, map_location=torch.device(device))
        return cls(module.eval(), kind)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] image in [0, 1] and [B, 1, H, W] mask -> normal [B, 3, H, W] or depth [B, 1, H, W],
        zero outside.

        Normals are unit vectors; depth is min-max normalised to [0, 1] inside the mask.
        """
        h, w = image.shape[-2:]
        x = F.interpolate(image, INPUT_SIZE, mode="bilinear", align_corners=False)
        dtype = next(iter(self.module.parameters()), torch.empty(0)).dtype
        out = self.module(normalise(x).to(dtype)).float()
        out = F.interpolate(out, (h, w), mode="bilinear", align_corners=False)
        inside = mask > 0.5
        if self.kind == "normal":
            return F.normalize(out, dim=1) * inside
        big = torch.finfo(out.dtype).max
        lo = torch.where(inside, out, big).amin(dim=(1, 2, 3), keepdim=True)
        hi = torch.where(inside, out, -big).amax(dim=(1, 2, 3), keepdim=True)
        d = (out - lo) / (hi - lo).clamp_min(1e-6)
        return (1.0 - d if self.near_bright else d) * inside


def load_estimators(cfg: Config, device: torch.device | str) -> dict[str, SapiensEstimator | None]:
    """Both estimators; a missing one stops the run unless ``cfg.sapiens_optional`` allows it.

    With ``sapiens_optional`` a missing estimator is ``None`` and a warning says that the matching
    depth / normal losses are disabled; the caller then sets those loss weights to zero.
    """
    out: dict[str, SapiensEstimator | None] = {}
    for kind in ("normal", "depth"):
        try:
            out[kind] = SapiensEstimator.from_pretrained(cfg, kind, device)
        except MissingWeightError as err:
            if not cfg.sapiens_optional:
                raise
            log.warning("Sapiens %s estimator missing, %s losses disabled (%s)", kind, kind, err)
            out[kind] = None
    return out
