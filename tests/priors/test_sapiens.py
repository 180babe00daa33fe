"""Sapiens pre- and post-processing: the network sees 1024x768, the caller gets its own size, masked."""
import pytest
import torch
import torch.nn.functional as F

from priors.sapiens import MEAN, STD, SapiensEstimator


class Recording(torch.nn.Module):
    """Sapiens' interface (half-resolution output) that keeps every input it is given."""

    def __init__(self, out_channels: int):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, out_channels, 3, padding=1)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return self.conv(F.avg_pool2d(x, 2))


@pytest.mark.parametrize("kind,channels", [("normal", 3), ("depth", 1)])
def test_sapiens_sees_1024x768_and_returns_the_input_size_masked(kind, channels):
    net = Recording(channels)
    image, mask = torch.rand(1, 3, 100, 80), torch.zeros(1, 1, 100, 80)
    mask[..., 20:90, 10:60] = 1
    out = SapiensEstimator(net, kind)(image, mask)
    (x,) = net.inputs
    assert x.shape == (1, 3, 1024, 768)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (MEAN, STD))
    torch.testing.assert_close(x, (F.interpolate(image, (1024, 768), mode="bilinear") - mean) / std)
    assert out.shape == (1, channels, 100, 80)
    assert out[(mask == 0).expand_as(out)].abs().max() == 0
    raw = F.interpolate(net.conv(F.avg_pool2d(x, 2)), (100, 80), mode="bilinear").detach()
    if kind == "normal":
        torch.testing.assert_close(out, F.normalize(raw, dim=1) * mask)
    else:
        inside = raw[mask > 0]
        torch.testing.assert_close(out, (1 - (raw - inside.min()) / (inside.max() - inside.min())) * mask)
