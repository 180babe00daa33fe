"""Prompt embeddings: the negative prompt is what the unconditional branch sees."""
import torch

from priors import tiny
from priors.text import PromptEncoder


def test_negative_prompt_is_the_unconditional_embedding():
    enc = PromptEncoder(tiny.tokenizer(), tiny.text_encoder(0))
    emb = enc("a person", "blurry, low quality")
    torch.testing.assert_close(emb.uncond, enc.encode(["blurry, low quality"]))
    torch.testing.assert_close(emb.cond, enc.encode(["a person"]))
    assert not torch.allclose(emb.uncond, enc.encode([""]), atol=1e-3)
    torch.testing.assert_close(enc("a person").uncond, enc.encode([""]))  # no negative prompt: empty string
    batch = emb.batch(2)  # [cond, cond, uncond, uncond], the order the priors chunk
    torch.testing.assert_close(batch[2:], emb.uncond.expand(2, -1, -1))
    torch.testing.assert_close(batch[:2], emb.cond.expand(2, -1, -1))
