"""Prompt embeddings for the SD 1.5-family priors (CLIP text encoder, last hidden state)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import CLIPTextModel, CLIPTokenizer


@dataclass
class PromptEmbeddings:
    """Conditional and unconditional (negative-prompt) text embeddings, each [1, 77, D]."""

    cond: torch.Tensor
    """Embedding of the prompt."""
    uncond: torch.Tensor
    """Embedding of the negative prompt (empty string: the unconditional branch)."""

    def batch(self, n: int) -> torch.Tensor:
        """[2n, 77, D]: n conditional rows then n unconditional rows (the CFG batch order)."""
        return torch.cat([self.cond.expand(n, -1, -1), self.uncond.expand(n, -1, -1)])


class PromptEncoder:
    """Tokenizer + CLIP text encoder of one SD 1.5-family pipeline.

    Args:
        tokenizer: CLIP tokenizer (77 tokens, padded to the maximum length as SD was trained).
        text_encoder: CLIP text model; SD 1.5 conditions on its last hidden state.
    """

    def __init__(self, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """[len(prompts), 77, D] embeddings."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        device = self.text_encoder.device
        return self.text_encoder(ids.to(device)).last_hidden_state

    def __call__(self, prompt: str, negative_prompt: str = "") -> PromptEmbeddings:
        """Embeddings of a prompt and its negative prompt."""
        both = self.encode([prompt, negative_prompt])
        return PromptEmbeddings(cond=both[:1], uncond=both[1:])
