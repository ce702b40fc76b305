"""Prompt encoding into the conditioning the LTX-2 transformer takes (caption-width embeddings + attention mask)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Gemma3TextConfig, Gemma3TextModel

from ..loading.models import Preset

BYTE_OFFSET = 3
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


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


class ByteTokenizer:
    """UTF-8 byte tokenizer: needs no vocabulary file, so the tiny text encoder works fully offline."""

    vocab_size = 256 + BYTE_OFFSET

    def __call__(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(texts), max_length), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(texts), max_length), dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [BOS_ID] + [b + BYTE_OFFSET for b in text.encode("utf-8")][: max_length - 2] + [EOS_ID]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return ids, mask


class TinyTextEncoder:
    """A tiny Gemma-3 text model (real transformers class, seeded weights) + byte tokenizer for tests and demos."""

    def __init__(self, preset: Preset, device: str | torch.device = "cpu", max_length: int = 64):
        cfg = dict(preset.text_encoder or {})
        self.tokenizer = ByteTokenizer()
        config = Gemma3TextConfig(vocab_size=ByteTokenizer.vocab_size, **cfg)
        state = torch.random.fork_rng(devices=[])
        state.__enter__()
        try:
            torch.manual_seed(preset.seed + 2)
            self.model = Gemma3TextModel(config).eval().to(device)
        finally:
            state.__exit__(None, None, None)
        self.max_length = max_length
        self.caption_channels = preset.transformer["caption_channels"]
        if config.hidden_size != self.caption_channels:
            raise ValueError(f"text encoder width {config.hidden_size} != caption_channels {self.caption_channels}")

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextConditioning:
        """Embed prompts: last hidden state, padded to a fixed length with a mask."""
        device = next(self.model.parameters()).device
        ids, mask = self.tokenizer(prompts, self.max_length)
        out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        return TextConditioning(out.float(), mask.to(device), prompts[0] if len(prompts) == 1 else "")


def concat_conditionings(items: list[TextConditioning]) -> TextConditioning:
    """Batch several conditionings (e.g. positive and negative for CFG), padding to the longest."""
    length = max(c.embeds.shape[1] for c in items)
    embeds, masks, audio = [], [], []
    for c in items:
        pad = length - c.embeds.shape[1]
        embeds.append(torch.nn.functional.pad(c.embeds, (0, 0, 0, pad)))
        masks.append(torch.nn.functional.pad(c.mask, (0, pad)))
        extra = getattr(c, "audio_embeds", None)
        audio.append(None if extra is None else torch.nn.functional.pad(extra, (0, 0, 0, pad)))
    return TextConditioning(torch.cat(embeds), torch.cat(masks),
                            audio_embeds=torch.cat(audio) if all(a is not None for a in audio) else None)
