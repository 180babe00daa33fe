"""CLIP image embeddings for geneman eval: preprocessing against a hand computation and against
transformers' own CLIPImageProcessor, similarity against the model's embeddings by hand, loading."""
import json

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessorPil
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from priors import tiny
from priors.clip import CLIP_MEAN, CLIP_STD, CLIPImageEncoder, clip_preprocess, cosine
from priors.config import Config
from priors.weights import MissingWeightError

MEAN = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny CLIP saved as the Hub holds openai/clip-vit-large-patch14 (config.json + model.safetensors)."""
    root = tmp_path_factory.mktemp("weights")
    tiny.clip(0).save_pretrained(root / Config().clip_eval)
    return root


def smooth_image(h: int, w: int) -> np.ndarray:
    """[H, W, 3] uint8, smooth enough for resampling filters to agree, steep enough that a shifted crop shows."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = [128 + 100 * np.sin(xx / 7.0), 128 + 100 * np.cos(yy / 5.0), 128 + 60 * np.sin((xx + yy) / 9.0)]
    return np.stack(rgb, -1).round().astype(np.uint8)


def test_mean_and_std_are_openai_clips():
    assert CLIP_MEAN == tuple(OPENAI_CLIP_MEAN) and CLIP_STD == tuple(OPENAI_CLIP_STD)


def test_an_image_at_size_is_centre_cropped_and_normalised_only():
    x = torch.rand(2, 3, 8, 13)  # shorter side already 8: no resize; crop offset (13 - 8) // 2 = 2
    expected = (x[..., :, 2:10] - MEAN) / STD
    torch.testing.assert_close(clip_preprocess(x, 8), expected)
    tall = x.transpose(-1, -2)  # [2, 3, 13, 8]: the crop moves along the height
    torch.testing.assert_close(clip_preprocess(tall, 8), (tall[..., 2:10, :] - MEAN) / STD)


def test_a_flat_image_stays_flat_through_the_resize():
    x = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1).expand(1, 3, 45, 70)
    out = clip_preprocess(x, 32)
    assert out.shape == (1, 3, 32, 32)
    torch.testing.assert_close(out, ((x[..., :1, :1] - MEAN) / STD).expand(1, 3, 32, 32))


@pytest.mark.parametrize("shape", [(60, 90), (90, 60), (41, 41)])
def test_preprocessing_matches_transformers_clip_image_processor(shape):
    """transformers resizes the 8-bit image with PIL and rounds; ours stays float: under a grey level apart."""
    img = smooth_image(*shape)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    theirs = processor(images=img, return_tensors="pt").pixel_values
    ours = clip_preprocess(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255, 24)
    assert ours.shape == theirs.shape == (1, 3, 24, 24)
    grey_levels = ((ours - theirs) * STD * 255).abs()
    assert grey_levels.max() < 1.5 and grey_levels.mean() < 0.5


def test_similarity_of_an_image_with_itself_is_one_and_of_two_is_the_embeddings_cosine(folder):
    encoder = CLIPImageEncoder.from_folder(folder / Config().clip_eval)
    a, b = torch.rand(1, 3, 40, 48), torch.rand(1, 3, 40, 48)
    torch.testing.assert_close(cosine(encoder(a), encoder(a)), torch.ones(1))
    model = tiny.clip(0)  # the same seeded weights, through CLIPModel itself
    with torch.no_grad():
        emb = [model.get_image_features(pixel_values=clip_preprocess(x, 32)) for x in (a, b)]
    emb = [e if isinstance(e, torch.Tensor) else e.pooler_output for e in emb]  # transformers 5: an output object
    by_hand = (emb[0] @ emb[1].T).item() / (emb[0].norm() * emb[1].norm()).item()
    assert abs(cosine(encoder(a), encoder(b)).item() - by_hand) < 1e-5
    assert abs(by_hand) < 1 - 1e-3  # two random images are not the same to CLIP


def test_embeddings_are_unit_length_and_batched(folder):
    encoder = CLIPImageEncoder.from_pretrained(Config(weights_dir=str(folder)))
    x = torch.rand(3, 3, 32, 32)
    e = encoder(x)
    assert e.shape == (3, tiny.WIDTH) and encoder.size == 32
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(e[1:2], encoder(x[1:2]), atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_missing_clip_names_its_id_file_and_folder(tmp_path):
    with pytest.raises(MissingWeightError) as err:
        CLIPImageEncoder.from_pretrained(Config(weights_dir=str(tmp_path)))
    msg = str(err.value)
    assert "openai/clip-vit-large-patch14" in msg and "model.safetensors" in msg and "config.json" in msg
    assert str(tmp_path / "openai" / "clip-vit-large-patch14") in msg and "\n" not in msg


def test_a_folder_that_is_no_clip_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(ValueError, match="'siglip' model, not CLIP"):
        CLIPImageEncoder.from_folder(tmp_path)
