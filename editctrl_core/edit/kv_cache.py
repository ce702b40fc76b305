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

Rope = tuple[torch.Tensor, torch.Tensor]


def _project(attn, hidden_states: torch.Tensor, query_rotary_emb: Rope | None, key_rotary_emb: Rope | None
             ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gate logits, rotated query, rotated key, value) of an LTX2Attention's self-attention input."""
    gate_logits = attn.to_gate_logits(hidden_states) if attn.to_gate_logits is not None else None
    query = attn.norm_q(attn.to_q(hidden_states))
    key = attn.norm_k(attn.to_k(hidden_states))
    value = attn.to_v(hidden_states)
    if query_rotary_emb is not None:
        rotate = apply_interleaved_rotary_emb if attn.rope_type == "interleaved" else apply_split_rotary_emb
        query = rotate(query, query_rotary_emb)
        key = rotate(key, key_rotary_emb if key_rotary_emb is not None else query_rotary_emb)
    return gate_logits, query, key, value


def _heads(attn, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """[B,S,H·D] → [B,H,S,D] for each tensor."""
    return [t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in tensors]


def _output(attn, out: torch.Tensor, gate_logits: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """[B,H,S,D] attention output → merged heads, per-head gates, output projection."""
    out = out.transpose(1, 2).flatten(2).to(dtype)
    if gate_logits is not None:
        out = (out.unflatten(2, (attn.heads, -1)) * (2.0 * torch.sigmoid(gate_logits)).unsqueeze(-1)).flatten(2)
    return attn.to_out[1](attn.to_out[0](out))


def _attend(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, gate_logits: torch.Tensor | None,
            attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention over [B,S,H·D] projections, per-head gates, output projection."""
    q, k, v = _heads(attn, query, key, value)
    bias = None if attention_mask is None else attention_mask.unsqueeze(1).to(q.dtype)
    return _output(attn, F.scaled_dot_product_attention(q, k, v, attn_mask=bias), gate_logits, query.dtype)


class CachedSelfAttention:
    """Attention processor for a block's `attn1` that prepends cached keys/values of earlier windows (``keep``: add
    this call's own to the cache; off, a call attends to the cache without changing it)."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.keep = True

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 query_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
                 key_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None, **_: object) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("CachedSelfAttention only serves self-attention")
        gate_logits, query, key, value = _project(attn, hidden_states, query_rotary_emb, key_rotary_emb)
        if self.keys is not None:
            key = torch.cat([self.keys, key], dim=1)
            value = torch.cat([self.values, value], dim=1)
        if self.keep:
            self.keys, self.values = key, value
        return _attend(attn, query, key, value, gate_logits, attention_mask)


@contextmanager
def installed(blocks: list[torch.nn.Module], processors: list) -> Iterator[list]:
    """Set the blocks' video self-attention processors while entered; restore the originals on exit."""
    originals = [block.attn1.processor for block in blocks]
    try:
        for block, processor in zip(blocks, processors):
            block.attn1.set_processor(processor)
        yield processors
    finally:
        for block, original in zip(blocks, originals):
            block.attn1.set_processor(original)


@contextmanager
def cached_self_attention(blocks: list[torch.nn.Module]) -> Iterator[list[CachedSelfAttention]]:
    """Install fresh caching processors on the blocks' video self-attention; restore the originals on exit."""
    with installed(blocks, [CachedSelfAttention() for _ in blocks]) as caches:
        yield caches


class PrefixAttention(CachedSelfAttention):
    """Attention processor for a decoder block's `attn1` under the one-way SCD prefix.

    ``mode = "record"``: attend to the call's own tokens (the prefix) and keep their keys/values (the first time
    only, so a gradient-checkpointing recomputation leaves them as they were); ``mode = "prepend"``: attend to the
    kept prefix keys/values followed by the call's own (the noisy tokens). Equals one pass over [prefix; noisy] under
    a mask that hides the noisy tokens from the prefix, with flash attention and no [2n,2n] mask.
    """

    mode = "record"

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 query_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
                 key_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None, **_: object) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("PrefixAttention serves unmasked self-attention only")
        gate_logits, query, key, value = _project(attn, hidden_states, query_rotary_emb, key_rotary_emb)
        if self.mode == "record":
            if self.keys is None:
                self.keys, self.values = key, value
        else:
            if self.keys is None:
                raise RuntimeError("PrefixAttention: the prefix pass must run before the noisy tokens")
            key, value = torch.cat([self.keys, key], dim=1), torch.cat([self.values, value], dim=1)
        return _attend(attn, query, key, value, gate_logits)


class OneWayPrefixAttention:
    """Attention processor for a decoder block's `attn1` over [prefix; noisy] (the first `prefix_tokens` are the
    prefix): the prefix attends to itself only, the noisy tokens to everything. Two unmasked (flash) attention calls
    instead of one over a [2n,2n] mask, in a single block call (so FSDP and gradient checkpointing see one use)."""

    def __init__(self, prefix_tokens: int) -> None:
        self.prefix_tokens = prefix_tokens

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, query_rotary_emb: Rope | None = None,
                 key_rotary_emb: Rope | None = None, **_: object) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("OneWayPrefixAttention serves unmasked self-attention only")
        gate_logits, query, key, value = _project(attn, hidden_states, query_rotary_emb, key_rotary_emb)
        n = self.prefix_tokens
        q, k, v = _heads(attn, query, key, value)
        prefix = F.scaled_dot_product_attention(q[:, :, :n], k[:, :, :n], v[:, :, :n])
        noisy = F.scaled_dot_product_attention(q[:, :, n:], k, v)
        return _output(attn, torch.cat([prefix, noisy], dim=2), gate_logits, query.dtype)
