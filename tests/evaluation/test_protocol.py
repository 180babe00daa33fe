"""The evaluation protocol against known answers: a reference equal to the reference view (PSNR inf,
LPIPS 0, CLIP 1 at view 0), a known noise (PSNR 20 dB), each view's CLIP similarity by hand."""
import doctest
import math

import pytest
import torch
import torch.nn.functional as F

from evaluation import protocol
from priors import tiny
from priors.clip import CLIPImageEncoder, cosine
from stages.inputs import Inputs
from stages.render.layout import to_channels_first
from tests.evaluation.avatars import textured_sphere

RES = 32


@pytest.fixture(scope="module")
def avatar():
    return textured_sphere()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    tiny.clip(0).save_pretrained(folder)
    return CLIPImageEncoder.from_folder(folder)


@pytest.fixture(scope="module")
def view0(avatar):
    return avatar.render(protocol.protocol_cameras()[0], RES, RES)["rgb"].clamp(0, 1)


def test_the_protocol_cameras():
    cams = protocol.protocol_cameras()
    assert len(cams) == 120
    torch.testing.assert_close(cams.azimuth, torch.arange(120.0) * 3.0)
    assert set(cams.elevation.tolist()) == {0.0} and set(cams.distance.tolist()) == {3.0}
    assert set(cams.fovy.tolist()) == {20.0}


def test_a_reference_equal_to_the_reference_view_scores_perfectly(avatar, clip, view0):
    seen = []
    scores = protocol.evaluate(avatar, view0, RES, clip=clip, lpips=tiny.lpips(0), on_views=seen.append)
    assert scores.psnr_ref == math.inf and scores.lpips_ref == 0.0
    assert len(scores.clip_per_view) == 120 and abs(scores.clip_per_view[0] - 1.0) < 1e-5
    assert all(-1.0 - 1e-6 <= c <= 1.0 + 1e-6 for c in scores.clip_per_view)
    assert min(scores.clip_per_view[1:]) < 1 - 1e-3  # the other sides of the sphere look different
    assert scores.clip_similarity == pytest.approx(sum(scores.clip_per_view) / 120)
    assert seen == list(range(8, 121, 8))


def test_psnr_of_a_known_noise_and_lpips_above_zero(avatar, view0):
    sign = (torch.arange(RES)[:, None] + torch.arange(RES)[None, :]) % 2 * 2 - 1  # checkerboard of +-1
    noisy = view0 + 0.1 * sign[None, :, :, None]  # every pixel off by 0.1: MSE 0.01, PSNR 20 dB
    scores = protocol.evaluate(avatar, noisy, RES, lpips=tiny.lpips(0), batch=40)
    assert scores.psnr_ref == pytest.approx(20.0, abs=1e-5)  # float32 pixels
    assert scores.lpips_ref > 0 and scores.clip_per_view is None and scores.clip_similarity is None


def test_each_views_clip_similarity_is_its_render_against_the_reference(avatar, clip, view0):
    reference = torch.rand(1, RES, RES, 3)
    scores = protocol.evaluate(avatar, reference, RES, clip=clip, batch=16)
    cams = protocol.protocol_cameras()
    for k in (0, 7, 8, 61, 119):  # batch edges included: a shifted view would not match
        view = avatar.render(cams[k], RES, RES)["rgb"].clamp(0, 1)
        by_hand = cosine(clip(to_channels_first(view)), clip(to_channels_first(reference))).item()
        assert scores.clip_per_view[k] == pytest.approx(by_hand, abs=1e-5)


def test_reference_image_is_the_preprocessed_photo_area_resized():
    rgb, mask = torch.rand(64, 64, 3), torch.ones(64, 64)
    ref = protocol.reference_image(Inputs(rgb=rgb, mask=mask), RES)
    by_hand = F.avg_pool2d(rgb.permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0)[None]  # 2x2 means
    torch.testing.assert_close(ref, by_hand)


def test_lpips_compares_both_images_at_224():
    seen = []

    def lpips(a, b):
        seen.append((tuple(a.shape), tuple(b.shape)))
        return (a - b).abs().mean(dim=(1, 2, 3))

    a = torch.zeros(1, RES, RES, 3)
    assert protocol.lpips_distance(lpips, a, a + 0.25) == pytest.approx(0.25)
    assert seen == [((1, 3, 224, 224), (1, 3, 224, 224))]


def test_finite_or_none():
    assert [protocol.finite_or_none(v) for v in (1.5, math.inf, math.nan, None)] == [1.5, None, None, None]


def test_docstring_examples():
    result = doctest.testmod(protocol)
    assert result.failed == 0 and result.attempted > 0
