"""Key/value caching for LTX-2 video self-attention, so the frame-causal SCD encoder can run window by window.

Because the encoder is frame-causal, a token's features at every block depend only on its own and earlier frames;
caching each block's (normed, rotated) keys and values of earlier windows therefore reproduces the single-pass
encoder exactly (up to float summation order) while holding only one window's activations at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_ltx2 import apply_interleaved_rotary_emb, apply_split_rotary_emb


class CachedSelfAttention:
    """Attention processor for a block's `attn1` that prepends cached keys/values of earlier windows."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 query_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
                 key_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None, **_: object) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("CachedSelfAttention only serves self-attention")
        gate_logits = attn.to_gate_logits(hidden_states) if attn.to_gate_logits is not None else None
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(hidden_states))
        value = attn.to_v(hidden_states)
        if query_rotary_emb is not None:
            rotate = apply_interleaved_rotary_emb if attn.rope_type == "interleaved" else apply_split_rotary_emb
            query = rotate(query, query_rotary_emb)
            key = rotate(key, key_rotary_emb if key_rotary_emb is not None else query_rotary_emb)
        if self.keys is not None:
            key = torch.cat([self.keys, key], dim=1)
            value = torch.cat([self.values, value], dim=1)
        self.keys, self.values = key, value
        q, k, v = (t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (query, key, value))
        bias = None if attention_mask is None else attention_mask.unsqueeze(1).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).flatten(2).to(query.dtype)
        if gate_logits is not None:
            out = (out.unflatten(2, (attn.heads, -1)) * (2.0 * torch.sigmoid(gate_logits)).unsqueeze(-1)).flatten(2)
        return attn.to_out[1](attn.to_out[0](out))


@contextmanager
def cached_self_attention(blocks: list[torch.nn.Module]) -> Iterator[list[CachedSelfAttention]]:
    """Install fresh caching processors on the blocks' video self-attention; restore the originals on exit."""
    originals = [block.attn1.processor for block in blocks]
    caches = [CachedSelfAttention() for _ in blocks]
    try:
        for block, cache in zip(blocks, caches):
            block.attn1.set_processor(cache)
        yield caches
    finally:
        for block, original in zip(blocks, originals):
            block.attn1.set_processor(original)
