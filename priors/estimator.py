"""A small depth or normal estimator with the Sapiens TorchScript models' interface, as weights only.

:class:`MapEstimator` takes what :class:`priors.sapiens.SapiensEstimator` feeds a Sapiens model (an
image normalised with Sapiens' mean and std, any size; preprocess sends 1024 x 768) and returns a map
at its working resolution that the wrapper resizes back and masks, as it does Sapiens' output: depth
as one channel, far = larger (the wrapper min-max normalises it and turns it near-bright), normals as
three camera-space channels (the wrapper normalises them). It is a diffusers ``ModelMixin`` /
``ConfigMixin``: ``config.json`` and ``diffusion_pytorch_model.safetensors`` in a folder, no code in the
file (a Sapiens ``.pt2`` is TorchScript, code, and needs a pinned hash or trust; this does not).

``geneman prior train-depth`` / ``train-normal`` (:mod:`training.train`) train it on ``geneman data
render`` images and their depth / normal maps; the demo preset's bundled estimators are two of them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
"""The weights file of an estimator folder (``priors.sapiens_<kind>_file`` names it)."""
CHANNELS = {"depth": 1, "normal": 3}
"""Output channels of each kind of estimator."""


def _block(c_in: int, c_out: int, stride: int = 1) -> torch.nn.Sequential:
    groups = 8 if c_out % 8 == 0 else 1
    return torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, 3, stride, 1), torch.nn.GroupNorm(groups, c_out),
                               torch.nn.SiLU(), torch.nn.Conv2d(c_out, c_out, 3, 1, 1),
                               torch.nn.GroupNorm(groups, c_out), torch.nn.SiLU())


class MapEstimator(ModelMixin, ConfigMixin):
    """A U-Net from an image to a depth (1 channel) or normal (3 channels) map.

    Args:
        out_channels: 1 (depth) or 3 (normal).
        channels: channels per level; the first level already works at half ``work_size``.
        work_size: ``(height, width)`` every input is resized to first (a Sapiens input's 4:3 shape);
            the output is at half of it.
    """

    @register_to_config
    def __init__(self, out_channels: int = 1, channels: tuple[int, ...] = (24, 48, 96), work_size=(128, 96)):
        super().__init__()
        if out_channels not in (1, 3):
            raise ValueError(f"out_channels must be 1 (depth) or 3 (normal), got {out_channels}")
        chans = list(channels)
        self.down = torch.nn.ModuleList([_block(3, chans[0], 2)] +
                                        [_block(a, b, 2) for a, b in zip(chans[:-1], chans[1:])])
        self.up = torch.nn.ModuleList([_block(b + a, a) for a, b in zip(chans[:-1], chans[1:])][::-1])
        self.head = torch.nn.Conv2d(chans[0], out_channels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised image -> ``[B, out_channels, h/2, w/2]`` at the working size."""
        x = F.interpolate(image, tuple(self.config.work_size), mode="bilinear", align_corners=False, antialias=True)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, skips[-2::-1]):
            x = F.interpolate(x, skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


def load_estimator(path: Path, device: torch.device | str, kind: str, role: str) -> MapEstimator:
    """The ``kind`` estimator whose weights are ``path`` (its ``config.json`` beside it), in float32 (the
    bundled copies are stored in float16); ``role`` names where it was given, for the error.

    Raises:
        ValueError: the config or weights cannot be read, or the estimator is of the other kind (one line
            naming the file).
    """
    from safetensors.torch import load_file

    path = Path(path)
    config = path.parent / "config.json"
    try:
        net = MapEstimator.from_config(json.loads(config.read_text()))
        state = load_file(str(path))
        net.load_state_dict({k: v.float() for k, v in state.items()})
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise ValueError(f"{path}: not a geneman depth/normal estimator ({str(e).splitlines()[0]}); "
                         f"train one with `geneman prior train-depth|train-normal`") from None
    if net.config.out_channels != CHANNELS[kind]:
        raise ValueError(f"{path}: a {net.config.out_channels}-channel estimator given as {role}; give a "
                         f"train-{kind} output")
    return net.to(device).eval()
