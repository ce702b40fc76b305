"""LTX-2 video self-attention under a one-way prefix, written once for the reference and the fast paths.

The one-way prefix (SCD's encoder context, ``training_free``'s clean background) attends to itself only, so each
block's prefix keys/values are computed once per edit; the edited tokens then attend to [prefix; own]. The pieces
here — projections with qk-norm and rotary embedding (:func:`project_query`, :func:`project_kv`), keys/values
behind a prefix (:func:`keys_with_prefix`), the attention kernel (:func:`attention`) and the gated output
(:func:`attention_out`) — serve both the diffusers attention processors of :mod:`~editctrl_core.edit.kv_cache`
(the reference) and the fused blocks of :mod:`~editctrl_core.edit.fast_decode`, which only add in-place buffers
(:class:`PrefixBuffer`) and precomputed rotary tables (:class:`SplitRope`) around the same arithmetic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_ltx2 import apply_interleaved_rotary_emb, apply_split_rotary_emb
from torch.nn.attention import SDPBackend, sdpa_kernel

Rope = tuple[torch.Tensor, torch.Tensor]


def heads(x: torch.Tensor, count: int) -> torch.Tensor:
    """[B,S,H·D] → [B,H,S,D]."""
    return x.unflatten(-1, (count, -1)).transpose(1, 2)


def merge(x: torch.Tensor) -> torch.Tensor:
    """[B,H,S,D] → [B,S,H·D]."""
    return x.transpose(1, 2).flatten(2)


class SplitRope(NamedTuple):
    """LTX-2's split rotary tables laid out token-major [B,S,H,1,D/2] (float32): cos, sin and −sin, so that one
    rotation is four kernels on the projection as it comes out of the matmul (diffusers' runs six, two of them
    float32 transposing copies, plus a negation every call). Same arithmetic, so the numbers are bit-identical."""

    cos: torch.Tensor
    sin: torch.Tensor
    neg_sin: torch.Tensor


def split_rope(rope: Rope | SplitRope, rope_type: str) -> Rope | SplitRope:
    """Precompute :class:`SplitRope` tables from diffusers' (cos, sin) [B,H,S,D/2] (split rope only; other layouts
    and already converted tables are returned as they are). Once per edit."""
    if rope_type != "split" or isinstance(rope, SplitRope):
        return rope
    cos, sin = rope
    if cos.ndim != 4:
        return rope
    cos_t = cos.float().permute(0, 2, 1, 3).unsqueeze(-2).contiguous()
    sin_t = sin.float().permute(0, 2, 1, 3).unsqueeze(-2).contiguous()
    return SplitRope(cos_t, sin_t, -sin_t)


def _rotate_split(x: torch.Tensor, rope: SplitRope, out: torch.Tensor) -> torch.Tensor:
    """Rotate x [B,S,H·D] with token-major tables into out [B,S,H,2,D/2] (x's dtype, any strides): the float32
    product x·cos once, then each half's float32 multiply-add rounded straight into `out` — diffusers' arithmetic
    (upcast, multiply, two multiply-adds, one rounding) in three kernels."""
    b, s = x.shape[:2]
    count, half = rope.cos.shape[2], rope.cos.shape[-1]
    split = x.view(b, s, count, 2, half)
    prod = split * rope.cos  # bf16 × f32 → f32, as diffusers' upcast-then-multiply
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and (x.requires_grad or rope.cos.requires_grad)):
        # out= has no autograd and breaks dynamo graphs: the same arithmetic in place, then one rounding copy
        prod[..., :1, :].addcmul_(split[..., 1:, :], rope.neg_sin)
        prod[..., 1:, :].addcmul_(split[..., :1, :], rope.sin)
        return out.copy_(prod)
    torch.addcmul(prod[..., :1, :], split[..., 1:, :], rope.neg_sin, out=out[..., :1, :])
    torch.addcmul(prod[..., 1:, :], split[..., :1, :], rope.sin, out=out[..., 1:, :])
    return out


def apply_rope(x: torch.Tensor, rope: Rope | SplitRope, rope_type: str) -> torch.Tensor:
    """LTX-2 rotary embedding on [B,S,H·D] projections (diffusers' own functions, or the same arithmetic on
    :class:`SplitRope` tables, so the numbers are identical)."""
    if isinstance(rope, SplitRope):
        b, s = x.shape[:2]
        out = x.new_empty(b, s, rope.cos.shape[2], 2, rope.cos.shape[-1])
        return _rotate_split(x, rope, out).view(b, s, -1)
    if rope_type == "split":
        return apply_split_rotary_emb(x, rope)
    return apply_interleaved_rotary_emb(x, rope)


def _heads_into(x: torch.Tensor, rope: Rope | SplitRope | None, rope_type: str, count: int,
                out: torch.Tensor) -> None:
    """Rotate x [B,S,H·D] (when `rope` is given) and write it, heads split, into out [B,H,S,D] (on
    :class:`SplitRope` tables the rounding writes straight into `out`: no separate copy)."""
    if isinstance(rope, SplitRope):
        _rotate_split(x, rope, out.transpose(1, 2).unflatten(-1, (2, -1)))
    else:
        out.copy_(heads(x if rope is None else apply_rope(x, rope, rope_type), count))


# Attention kernels. cuDNN's fused attention (PyTorch's first choice on Hopper) builds an execution plan for every new
# shape, about 50 ms each on an H200 — most of what a cold edit paid: the frame-causal encoder alone meets one shape per
# latent frame. Flash attention has no per-shape plan and is somewhat slower per call. So a shape takes flash when the
# time flash would lose over an edit (its FLOPs × the calls of that shape per edit, at an assumed ≈350 vs ≈550 TFLOP/s)
# is below one plan build: the once-per-edit passes and the steps of small masks; large masks keep cuDNN, whose plan is
# built once and replayed by the CUDA graph every step.
PLAN_COST_FLOPS = 5e13
_PLAN_FREE = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, *,
              repeats: int | None = None) -> torch.Tensor:
    """scaled_dot_product_attention on [B,H,S,D]. ``repeats``: how often this shape runs per edit (None: many);
    on CUDA a shape whose attention work over the edit is below :data:`PLAN_COST_FLOPS` avoids cuDNN's per-shape
    plan. Same function, another kernel (rounding-level differences only)."""
    if q.is_cuda and repeats is not None and not torch.compiler.is_compiling():
        flops = 4 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3] * repeats
        if flops < PLAN_COST_FLOPS:
            with sdpa_kernel(_PLAN_FREE):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


#: (device, dtype) pairs whose attention libraries :func:`warm_attention_kernels` has initialised in this process
_WARMED: set[tuple[str, torch.dtype]] = set()


def warm_attention_kernels(device: torch.device | str, dtype: torch.dtype) -> float:
    """Initialise cuDNN's fused attention and flash attention once per process, device and dtype, at a shape no edit
    uses: cuDNN's first call in a process loads its engines (≈0.5 s on an H200, measured by the benchmark's
    diagnostics), a per-process cost like loading the weights, so it belongs to making the model ready rather than
    to the first edit. Returns the seconds spent (0 off CUDA or when already done)."""
    device = torch.device(device)
    key = (str(device), dtype)
    if device.type != "cuda" or key in _WARMED:
        return 0.0
    start = time.perf_counter()
    q = torch.randn(1, 2, 136, 64, device=device, dtype=dtype)
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, q, q)
        except RuntimeError:  # the backend does not serve this card or dtype: nothing to initialise
            pass
    torch.cuda.synchronize(device)
    _WARMED.add(key)
    return time.perf_counter() - start


@dataclass
class BlockKV:
    """Keys/values of one attention input, heads split: [B,H,S,D] each."""

    k: torch.Tensor
    v: torch.Tensor


@dataclass
class PrefixBuffer(BlockKV):
    """[B,H,P+n,D] key/value buffers whose first P positions hold a cached prefix; each step writes its own n keys
    and values behind it in place instead of concatenating (half the copying)."""

    prefix_len: int = 0

    @classmethod
    def around(cls, prefix: BlockKV, n: int, out: PrefixBuffer | None = None) -> PrefixBuffer:
        """Buffers for `prefix` followed by n more tokens (written into `out`'s storage when given: a buffer of the
        same shape that a captured CUDA graph reads)."""
        b, h, p, d = prefix.k.shape
        if out is not None:
            if tuple(out.k.shape) != (b, h, p + n, d) or out.prefix_len != p:
                raise ValueError(f"prefix buffer {tuple(out.k.shape)} cannot hold {(b, h, p + n, d)}")
            k, v = out.k, out.v
        else:
            k, v = prefix.k.new_empty(b, h, p + n, d), prefix.v.new_empty(b, h, p + n, d)
        k[:, :, :p], v[:, :, :p] = prefix.k, prefix.v
        return out if out is not None else cls(k, v, p)

    def tail(self) -> BlockKV:
        """Views of the positions behind the prefix, where a step's own keys/values go."""
        return BlockKV(self.k[:, :, self.prefix_len:], self.v[:, :, self.prefix_len:])


def project_query(attn: torch.nn.Module, x: torch.Tensor, rope: Rope | SplitRope | None = None,
                  rope_type: str = "split") -> torch.Tensor:
    """Queries [B,H,S,D] of an LTX2Attention input x [B,S,D']: norm_q(to_q(x)), rotated when `rope` is given."""
    q = attn.norm_q(attn.to_q(x))
    return heads(q if rope is None else apply_rope(q, rope, rope_type), attn.heads)


def project_kv(attn: torch.nn.Module, x: torch.Tensor, rope: Rope | SplitRope | None = None,
               rope_type: str = "split", out: BlockKV | None = None) -> BlockKV:
    """Keys/values [B,H,S,D] of an LTX2Attention input x [B,S,D']: norm_k(to_k(x)) (rotated when `rope` is given)
    and to_v(x); the per-block prefix keys/values, the step's own and the prompt's all come from here. ``out``:
    [B,H,S,D] views to write them into (a :meth:`PrefixBuffer.tail`), the rotation rounding straight into them."""
    k = attn.norm_k(attn.to_k(x))
    if out is None:
        return BlockKV(heads(k if rope is None else apply_rope(k, rope, rope_type), attn.heads),
                       heads(attn.to_v(x), attn.heads))
    _heads_into(k, rope, rope_type, attn.heads, out.k)
    out.v.copy_(heads(attn.to_v(x), attn.heads))
    return out


def join_prefix(prefix: BlockKV | None, own: BlockKV) -> BlockKV:
    """Keys/values [prefix; own]: written behind the prefix of a :class:`PrefixBuffer` in place, else
    concatenated (`own` itself without a prefix)."""
    if prefix is None:
        return own
    if isinstance(prefix, PrefixBuffer):
        tail = prefix.tail()
        tail.k.copy_(own.k)
        tail.v.copy_(own.v)
        return prefix
    return BlockKV(torch.cat([prefix.k, own.k], dim=2), torch.cat([prefix.v, own.v], dim=2))


def keys_with_prefix(attn: torch.nn.Module, x: torch.Tensor, rope: Rope | SplitRope | None, rope_type: str,
                     prefix: BlockKV | None, keep: bool = False) -> tuple[BlockKV, BlockKV | None]:
    """(keys/values [prefix; x's own] to attend to, x's own ones when `keep`: a prefix pass caching them). Into a
    :class:`PrefixBuffer` that need not keep them, x's own are projected straight behind the prefix (no copy)."""
    if isinstance(prefix, PrefixBuffer) and not keep:
        project_kv(attn, x, rope, rope_type, out=prefix.tail())
        return prefix, None
    own = project_kv(attn, x, rope, rope_type)
    return join_prefix(prefix, own), own if keep else None


def one_way_attention(q: torch.Tensor, kv: BlockKV, prefix_tokens: int, repeats: int | None = None
                      ) -> torch.Tensor:
    """Attention over [prefix; rest] in one call: the first `prefix_tokens` queries see the prefix only, the rest
    everything (two unmasked calls instead of one over a [2n,2n] mask)."""
    n = prefix_tokens
    prefix = attention(q[:, :, :n], kv.k[:, :, :n], kv.v[:, :, :n], repeats=repeats)
    rest = attention(q[:, :, n:], kv.k, kv.v, repeats=repeats)
    return torch.cat([prefix, rest], dim=2)


def attention_out(attn: torch.nn.Module, out: torch.Tensor, gate_source: torch.Tensor,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """[B,H,S,D] attention output → merged heads (cast to `dtype` when given, as diffusers does), the optional
    per-head gate from `gate_source` (the attention's input), output projection (as LTX2AudioVideoAttnProcessor)."""
    out = merge(out)
    if dtype is not None:
        out = out.to(dtype)
    if attn.to_gate_logits is not None:
        gates = 2.0 * torch.sigmoid(attn.to_gate_logits(gate_source))
        out = (out.unflatten(2, (attn.heads, -1)) * gates.unsqueeze(-1)).flatten(2, 3)
    return attn.to_out[1](attn.to_out[0](out))
