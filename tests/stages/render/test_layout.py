"""The one image-layout adapter: renderers give [B, H, W, C], priors take [B, C, H, W]."""
import pytest
import torch

from stages.render import layout
from stages.render.cameras import orbit_cameras
from stages.render.mesh_render import render_mesh


def test_round_trip_and_pixel_placement():
    x = torch.arange(2 * 5 * 4 * 3, dtype=torch.float32).reshape(2, 5, 4, 3)
    first = layout.to_channels_first(x)
    assert first.shape == (2, 3, 5, 4)
    assert torch.equal(first[1, 2, 3, 1], x[1, 3, 1, 2])  # [b, c, h, w] is [b, h, w, c]
    assert torch.equal(layout.to_channels_last(first), x)


@pytest.mark.parametrize("fn", [layout.to_channels_first, layout.to_channels_last])
def test_an_image_without_a_batch_axis_is_refused(fn):
    with pytest.raises(AssertionError, match="expected"):
        fn(torch.zeros(5, 4, 3))


def test_renders_are_channels_last_and_adapt_to_the_priors_layout():
    verts = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]])
    faces = torch.tensor([[0, 1, 2]])
    one = torch.ones(2)
    cams = orbit_cameras(0 * one, torch.tensor([0.0, 30.0]), 3 * one, 30 * one)
    out = render_mesh(verts, faces, cams, 12, 10)
    assert out["normal"].shape == (2, 12, 10, 3) and out["mask"].shape == (2, 12, 10, 1)
    images = layout.to_channels_first(out["normal"])
    assert images.shape == (2, 3, 12, 10)
    assert torch.equal(images[:, :, 6, 5], out["normal"][:, 6, 5, :])
