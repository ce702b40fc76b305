"""Key/value caching for LTX-2 video self-attention: diffusers attention processors for the frame-causal SCD encoder
run window by window and for the one-way prefix (the reference paths; the arithmetic is
:mod:`~editctrl_core.edit.prefix_attention`'s, shared with the fast blocks).

Because the encoder is frame-causal, a token's features at every block depend only on its own and earlier frames;
caching each block's (normed, rotated) keys and values of earlier windows therefore reproduces the single-pass
encoder exactly (up to float summation order) while holding only one window's activations at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import torch

from .prefix_attention import (
    BlockKV,
    Rope,
    attention,
    attention_out,
    keys_with_prefix,
    one_way_attention,
    project_query,
)


@dataclass
class SelfAttentionCall:
    """One `attn1` call as a processor receives it: the module, its (normed, modulated) input, the rotary tables of
    the queries and keys (as diffusers: the query table unless the keys have their own; none without a query table)
    and the additive mask."""

    attn: torch.nn.Module
    hidden: torch.Tensor
    query_rope: Rope | None
    key_rope: Rope | None
    mask: torch.Tensor | None

    def project(self, prefix: BlockKV | None = None, keep: bool = False
                ) -> tuple[torch.Tensor, BlockKV, BlockKV | None]:
        """(queries, keys/values [prefix; own], own ones when `keep`), rotated as diffusers' processor does."""
        attn = self.attn
        q = project_query(attn, self.hidden, self.query_rope, attn.rope_type)
        kv, own = keys_with_prefix(attn, self.hidden, self.key_rope, attn.rope_type, prefix, keep)
        return q, kv, own

    def output(self, q: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The block's attention output from [B,H,S,D] attention of queries `q` (gate, output projection)."""
        return attention_out(self.attn, out, self.hidden, q.dtype)

    def attend(self, prefix: BlockKV | None = None, keep: bool = False) -> tuple[torch.Tensor, BlockKV, BlockKV | None]:
        """(output, keys/values attended to, own ones when `keep`) of self-attention over [prefix; own]."""
        q, kv, own = self.project(prefix, keep)
        bias = None if self.mask is None else self.mask.unsqueeze(1).to(q.dtype)
        return self.output(q, attention(q, kv.k, kv.v, bias)), kv, own


class SelfAttentionProcessor(ABC):
    """A diffusers attention processor for an LTX-2 block's video self-attention (``attn1``) that this pack
    computes itself; ``masked`` off: it refuses an attention mask."""

    masked = True

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, query_rotary_emb: Rope | None = None,
                 key_rotary_emb: Rope | None = None, perturbation_mask: torch.Tensor | None = None,
                 all_perturbed: bool | torch.Tensor | None = None) -> torch.Tensor:
        """diffusers' call. The LTX-2.3/2.5 blocks (``perturbed_attn``) always pass the spatio-temporal-guidance
        arguments, so they are named here (diffusers warns on, and drops, every argument a processor does not
        name); a perturbation actually asked for is refused, since these processors do not implement it."""
        if encoder_hidden_states is not None or (not self.masked and attention_mask is not None):
            raise ValueError(f"{type(self).__name__} serves {'' if self.masked else 'unmasked '}self-attention only")
        if perturbation_mask is not None or bool(all_perturbed):
            raise ValueError(f"{type(self).__name__}: spatio-temporal guidance (a perturbation mask) is not "
                             "supported on EditCtrl's attention paths; run the edit without STG")
        key_rope = key_rotary_emb if key_rotary_emb is not None and query_rotary_emb is not None else query_rotary_emb
        return self.run(SelfAttentionCall(attn, hidden_states, query_rotary_emb, key_rope, attention_mask))

    @abstractmethod
    def run(self, call: SelfAttentionCall) -> torch.Tensor:
        """The attention output of one call."""


class CachedSelfAttention(SelfAttentionProcessor):
    """Attention processor for a block's `attn1` that prepends cached keys/values of earlier windows (``keep``: add
    this call's own to the cache; off, a call attends to the cache without changing it)."""

    def __init__(self) -> None:
        self.cache: BlockKV | None = None
        self.keep = True

    def run(self, call: SelfAttentionCall) -> torch.Tensor:
        out, kv, _ = call.attend(self.cache)
        if self.keep:
            self.cache = kv
        return out


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
    masked = False

    def run(self, call: SelfAttentionCall) -> torch.Tensor:
        if self.mode == "record":
            out, _, own = call.attend(keep=True)
            if self.cache is None:
                self.cache = own
            return out
        if self.cache is None:
            raise RuntimeError("PrefixAttention: the prefix pass must run before the noisy tokens")
        return call.attend(self.cache)[0]


class OneWayPrefix:
    """The reference one-way prefix over a range of blocks: one :class:`PrefixAttention` per block, and the
    per-block contexts (``LTX2Stack.run_blocks``' ``around_block``) of the prefix pass and of the noisy pass."""

    def __init__(self, indices: range, install: Callable[[int, PrefixAttention], AbstractContextManager]):
        """`install(index, processor)`: a context that sets block `index`'s self-attention processor."""
        self.caches = {i: PrefixAttention() for i in indices}
        self.install = install

    def around(self, mode: str) -> Callable[[int], AbstractContextManager]:
        """Per-block context with its processor in `mode` ("record": the prefix pass; "prepend": the noisy one),
        set again when gradient checkpointing recomputes the block."""
        def enter(index: int) -> AbstractContextManager:
            self.caches[index].mode = mode
            return self.install(index, self.caches[index])
        return enter


class OneWayPrefixAttention(SelfAttentionProcessor):
    """Attention processor for a decoder block's `attn1` over [prefix; noisy] (the first `prefix_tokens` are the
    prefix): the prefix attends to itself only, the noisy tokens to everything. Two unmasked (flash) attention calls
    instead of one over a [2n,2n] mask, in a single block call (so FSDP and gradient checkpointing see one use)."""

    masked = False

    def __init__(self, prefix_tokens: int) -> None:
        self.prefix_tokens = prefix_tokens

    def run(self, call: SelfAttentionCall) -> torch.Tensor:
        q, kv, _ = call.project()
        return call.output(q, one_way_attention(q, kv, self.prefix_tokens))
