"""LPIPS, VGG16 variant (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric"), written without torchvision and without downloads.

Stage 2 weights it on the reference normal maps (``lambda_normal_lpips``), stage 4 on the edited
views (``lambda_lpips``). The network is the lpips package's ``LPIPS(net="vgg", version="0.1")``:
its scaling layer, torchvision's VGG16 ``features`` tapped at relu1_2, relu2_2, relu3_3, relu4_3,
relu5_3, unit-normalised features, the 1x1 heads ``lin0..lin4``, spatial mean, sum.

Inputs differ from the lpips package's: :class:`LPIPS` takes images in ``[0, 1]`` (this project's
convention for images into priors) and maps them to the ``[-1, 1]`` the lpips package takes,
as ``lpips.LPIPS()(a, b, normalize=True)`` does.

Weights (the folder :data:`WEIGHT_ID`, under ``priors.weights_dir`` or an absolute folder given as
``priors.lpips``), safetensors only:

- ``vgg16.safetensors``: torchvision's VGG16 ImageNet weights, the keys ``features.N.weight`` /
  ``features.N.bias`` of ``vgg16-397923af.pth`` (``torchvision.models.VGG16_Weights.IMAGENET1K_V1``).
- ``vgg_lin.safetensors``: the LPIPS v0.1 VGG heads, ``lin0.model.1.weight`` .. ``lin4.model.1.weight``
  (each ``[1, C, 1, 1]``, no bias) of the lpips package's ``lpips/weights/v0.1/vgg.pth``.

No Hugging Face repository holds both as safetensors (``timm/vgg16.tv_in1k`` holds the VGG16 one,
``chaofengc/IQA-PyTorch-Weights`` the heads as ``LPIPS_v0.1_vgg-a78928a0.pth``, a pickle), so a
user makes the folder once from the two ``.pth`` files (torchvision caches the first in
``~/.cache/torch/hub/checkpoints/``; the second ships inside the lpips package)::

    python -c "from priors.lpips import convert_lpips_weights as c; c('vgg16-397923af.pth', 'vgg.pth', 'W/lpips')"

with ``W`` the weights folder (or any folder, then named by ``--set priors.lpips=/abs/folder``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from priors.config import Config

VGG16_WIDTHS = (64, 128, 256, 512, 512)
"""Channels of VGG16's five blocks (the real network)."""
CONVS_PER_BLOCK = (2, 2, 3, 3, 3)
"""3x3 convolutions in each of VGG16's blocks (torchvision's configuration "D")."""
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
"""The lpips package's scaling layer: ``(x - SHIFT) / SCALE`` on ``[-1, 1]`` images."""
WEIGHT_ID = "lpips"
"""Default folder of the weights under ``weights_dir`` (a geneman layout, not a Hub repository)."""
VGG_FILE, LIN_FILE = "vgg16.safetensors", "vgg_lin.safetensors"
"""The two files of :data:`WEIGHT_ID`."""
EPS = 1e-10
"""The lpips package's epsilon of the channel normalisation."""


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` layer for layer, returning the five LPIPS taps.

    ``self.features`` is the same ``nn.Sequential`` (conv, ReLU, ..., max-pool; 31 layers), so
    torchvision's keys ``features.N.weight`` / ``features.N.bias`` load as they are.

    Args:
        widths: channels of the five blocks (:data:`VGG16_WIDTHS` for the real network).

    Example:
        >>> net = VGG16Features((4, 8, 8, 16, 16))
        >>> [f.shape[1:] for f in net(torch.rand(1, 3, 32, 32))][::2]
        [torch.Size([4, 32, 32]), torch.Size([8, 8, 8]), torch.Size([16, 2, 2])]
        >>> net.taps, sorted(net.state_dict())[:2]
        ((3, 8, 15, 22, 29), ['features.0.bias', 'features.0.weight'])
    """

    def __init__(self, widths: tuple[int, ...] = VGG16_WIDTHS):
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"VGG16 has 5 blocks, got widths {tuple(widths)}")
        layers, taps, c_in = [], [], 3
        for width, n_convs in zip(widths, CONVS_PER_BLOCK):
            for _ in range(n_convs):
                layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU()]
                c_in = width
            taps.append(len(layers) - 1)  # the block's last ReLU: relu1_2, relu2_2, relu3_3, ...
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.widths, self.taps = tuple(widths), tuple(taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[B, 3, H, W] scaled image -> the five activations, [B, C_l, H / 2^l, W / 2^l] for l = 0..4."""
        out = []
        for i, layer in enumerate(self.features[: self.taps[-1] + 1]):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


class LinearHead(nn.Module):
    """The lpips package's ``NetLinLayer``: a 1x1 convolution to one channel, no bias.

    Index 0 of ``model`` is the package's dropout slot (inert in its eval mode, so an identity
    here), which keeps its key ``model.1.weight``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, 1, H, W]."""
        return self.model(x)


class LPIPS(nn.Module):
    """Learned perceptual distance between images, frozen, differentiable w.r.t. its inputs.

    State dict keys: ``vgg.features.N.weight`` / ``.bias`` (torchvision's, prefixed) and
    ``lin0.model.1.weight`` .. ``lin4.model.1.weight`` (the lpips package's).

    Args:
        widths: channels of VGG16's five blocks (:data:`VGG16_WIDTHS`; tiny ones in tests).

    Example:
        >>> d = LPIPS((4, 8, 8, 16, 16))
        >>> a = torch.rand(2, 3, 32, 32)
        >>> d(a, a).tolist(), d(a, a.flip(0)).shape
        ([0.0, 0.0], torch.Size([2]))
    """

    def __init__(self, widths: tuple[int, ...] = VGG16_WIDTHS):
        super().__init__()
        self.vgg = VGG16Features(widths)
        for i, width in enumerate(widths):
            setattr(self, f"lin{i}", LinearHead(width))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    @property
    def heads(self) -> list[LinearHead]:
        """``lin0..lin4`` in order."""
        return [getattr(self, f"lin{i}") for i in range(5)]

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """[B, 3, H, W] image in [0, 1] -> the five taps, each unit-normalised across channels."""
        # 1. [0, 1] -> [-1, 1], the lpips package's input range
        x = image.to(self.shift.dtype) * 2.0 - 1.0
        # 2. the lpips package's scaling layer (ImageNet statistics in [-1, 1] units)
        x = (x - self.shift) / self.scale
        # 3. VGG16 activations y^l, normalised in the channel dimension: y^l / ||y^l||_2 (eq. 1)
        return [f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS) for f in self.vgg(x)]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distance of each pair of images.

        Args:
            a: [B, 3, H, W] images in [0, 1] (H, W at least 16 for relu5_3 to have a pixel).
            b: [B, 3, H, W] images in [0, 1].

        Returns:
            [B] distances, 0 for equal images.
        """
        assert a.shape == b.shape and a.dim() == 4 and a.shape[1] == 3, \
            f"expected two [B, 3, H, W], got {a.shape}, {b.shape}"
        total = 0.0
        for fa, fb, head in zip(self.features(a), self.features(b), self.heads):
            # 4. eq. 1: ||w_l (.) (y^l - y0^l)||^2 summed over channels: the 1x1 head on squared
            #    differences (the package stores w_l^2 as the head's weight)
            per_pixel = head((fa - fb).pow(2))
            # 5. eq. 1: 1 / (H_l W_l) sum over h, w, then sum over the layers l
            total = total + per_pixel.mean(dim=(1, 2, 3))
        return total

    @classmethod
    def from_pretrained(cls, cfg: Config, device: torch.device | str = "cpu") -> "LPIPS":
        """Load :data:`VGG_FILE` and :data:`LIN_FILE` from the ``lpips`` weight (see the module
        docstring); the widths are read from the file, so a tiny copy loads the same way.

        Raises:
            priors.weights.MissingWeightError: a file is missing (names the id, file and folder).
        """
        from safetensors.torch import load_file

        from priors.weights import all_weights, resolve

        root = resolve(cfg, all_weights(cfg)["lpips"])
        vgg, lin = load_file(str(root / VGG_FILE)), load_file(str(root / LIN_FILE))
        model = cls(widths_of(vgg))
        model.load_state_dict({**{f"vgg.{k}": v for k, v in vgg.items() if k.startswith("features.")}, **lin})
        return model.to(device)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write :data:`VGG_FILE` and :data:`LIN_FILE` into ``folder`` (the layout of :meth:`from_pretrained`)."""
        save_weights(self.vgg.state_dict(), {k: v for k, v in self.state_dict().items() if k.startswith("lin")},
                     folder)


def widths_of(vgg_state: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """Block widths of a VGG16 ``features`` state dict (output channels of each block's first conv).

    Example:
        >>> widths_of(VGG16Features((4, 8, 8, 16, 16)).state_dict())
        (4, 8, 8, 16, 16)
    """
    firsts, i = [], 0
    for n_convs in CONVS_PER_BLOCK:
        firsts.append(i)
        i += 2 * n_convs + 1  # conv + ReLU per convolution, then the max-pool
    return tuple(int(vgg_state[f"features.{j}.weight"].shape[0]) for j in firsts)


def save_weights(vgg_state: dict[str, torch.Tensor], lin_state: dict[str, torch.Tensor],
                 folder: str | Path) -> tuple[Path, Path]:
    """Write the two safetensors files of the ``lpips`` weight; returns their paths."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / VGG_FILE, out / LIN_FILE
    for state, path in zip((vgg_state, lin_state), paths):
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))
    return paths


def convert_lpips_weights(vgg_pth: str | Path, lin_pth: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """Make the ``lpips`` weight folder from torchvision's and the lpips package's files.

    Args:
        vgg_pth: torchvision's ``vgg16-397923af.pth`` (keys ``features.N.*``; ``classifier.*`` is dropped).
        lin_pth: the lpips package's ``lpips/weights/v0.1/vgg.pth`` (keys ``lin0.model.1.weight`` ..).
        out_dir: the folder to write (``<weights_dir>/lpips``, or any folder named by ``priors.lpips``).

    Returns:
        Paths of the written ``vgg16.safetensors`` and ``vgg_lin.safetensors``.

    Raises:
        ValueError: a file lacks a key the network needs (names the file and the key).
    """
    vgg = torch.load(vgg_pth, map_location="cpu", weights_only=True)
    lin = torch.load(lin_pth, map_location="cpu", weights_only=True)
    feats = {k: v for k, v in vgg.items() if k.startswith("features.")}
    try:
        expected = LPIPS(widths_of(feats)).state_dict()
    except KeyError as err:
        raise ValueError(f"{vgg_pth}: no key {err.args[0]}; expected torchvision's vgg16 state dict") from None
    for key in expected:
        have = feats if key.startswith("vgg.") else lin
        name = key.removeprefix("vgg.")
        if name not in have:
            raise ValueError(f"{vgg_pth if have is feats else lin_pth}: no key {name}")
    return save_weights(feats, {k: lin[k] for k in expected if k.startswith("lin")}, out_dir)
