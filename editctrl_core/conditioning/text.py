"""Prompt encoding into the conditioning the LTX-2 transformer takes (caption-width embeddings + attention mask)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class TextConditioning:
    """Prompt embeddings [B,T,caption_channels] and their mask [B,T] (1 = real token)."""

    embeds: torch.Tensor
    mask: torch.Tensor
    prompt: str = ""
    audio_embeds: torch.Tensor | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype) -> TextConditioning:
        audio = None if self.audio_embeds is None else self.audio_embeds.to(device=device, dtype=dtype)
        return TextConditioning(self.embeds.to(device=device, dtype=dtype), self.mask.to(device), self.prompt, audio)


class TextEncoder(Protocol):
    """What the edit needs of a text encoder: prompts in, the transformer's conditioning out.

    `text_encoders.LTXTextEncoder` is the one implementation (Gemma + LTX-2 connectors); its `tiny` preset
    (`text_encoders.build_tiny_text_encoder`) is the same classes with tiny configs for tests, demos and recipes.
    """

    @property
    def caption_channels(self) -> int:
        """Width of the video embeddings."""
        ...

    def encode(self, prompts: list[str]) -> TextConditioning:
        """Embeddings and mask of each prompt (one batch row per prompt)."""
        ...

    def describe(self) -> str:
        """One line for logs."""
        ...


def concat_conditionings(items: list[TextConditioning]) -> TextConditioning:
    """Batch several conditionings (e.g. positive and negative for CFG), padding to the longest."""
    length = max(c.embeds.shape[1] for c in items)
    embeds, masks, audio = [], [], []
    for c in items:
        pad = length - c.embeds.shape[1]
        embeds.append(torch.nn.functional.pad(c.embeds, (0, 0, 0, pad)))
        masks.append(torch.nn.functional.pad(c.mask, (0, pad)))
        extra = c.audio_embeds
        audio.append(None if extra is None else torch.nn.functional.pad(extra, (0, 0, 0, pad)))
    return TextConditioning(torch.cat(embeds), torch.cat(masks),
                            audio_embeds=torch.cat(audio) if all(a is not None for a in audio) else None)
