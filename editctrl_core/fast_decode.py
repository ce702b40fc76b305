"""Fast SCD paths with per-edit caches: the same arithmetic as :class:`~editctrl_core.scd.SCDModel`, less repeated work.

What is cached once per edit (exact: none of it depends on the step):

- the text keys/values of every decoder block's prompt cross-attention (and of the local module's text attention);
- the global-context branch keys/values (already cached by ``SCDModel.plan``);
- the rotary tables of the selected tokens;
- with the one-way prefix (``SCDOptions.prefix="one_way"``, the default) the encoder-context prefix: its hidden
  states never change between steps because it does not attend to the noisy tokens, so its per-block self-attention
  keys/values are computed once and each step runs the decoder blocks on the noisy tokens only (half the tokens).
  With ``prefix="bidirectional"`` the prefix runs with the noisy tokens every step, as in ``SCDModel.decode``.

The silent one-token audio stream that ``LTX2Stack.run_blocks`` carries through every block is skipped: with
audio↔video cross-attention off it never reaches the video output. :class:`GraphedStep` replays a step as a CUDA
graph (no per-kernel launch cost). LTX-2.3/2.5 blocks (gated attention, prompt AdaLN) are reproduced too: LTX-2.5's
prompt modulation is static, so everything above is cached; LTX-2.3 modulates the prompt by σ, so the noisy
tokens' prompt keys/values are recomputed every step (the one-way prefix's use σ=0 and stay cached). Perturbed
attention (STG) is not used by the edit sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_ltx2 import apply_interleaved_rotary_emb, apply_split_rotary_emb

from .adapters import LocalContextModule, rope_3d, timestep_embedding
from .scd import DecodePlan, LTX2Stack, SCDModel, TextContext, shift_one_frame
from .text import TextConditioning

Rope = tuple[torch.Tensor, torch.Tensor]
Branch = tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B,S,H·D] → [B,H,S,D]."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[B,H,S,D] → [B,S,H·D]."""
    return x.transpose(1, 2).flatten(2)


def _apply_rope(x: torch.Tensor, rope: Rope, rope_type: str) -> torch.Tensor:
    """LTX-2 rotary embedding on [B,S,H·D] projections (diffusers' own functions, so the numbers are identical)."""
    if rope_type == "split":
        return apply_split_rotary_emb(x, rope)
    return apply_interleaved_rotary_emb(x, rope)


def _norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A block's affine-free RMSNorm as one fused kernel (diffusers' runs five, through float32 copies)."""
    if getattr(norm, "weight", None) is None:
        return F.rms_norm(x, (x.shape[-1],), eps=norm.eps)
    return norm(x)


def _modulate(normed: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """AdaLN modulation normed·(1 + scale) + shift in one kernel."""
    return torch.addcmul(shift, normed, 1 + scale)


def check_supported(stack: LTX2Stack, sigma_text: bool = True) -> None:
    """Raise NotImplementedError for what a fast path does not reproduce exactly (``sigma_text``: whether it can
    recompute σ-dependent prompt keys/values every step)."""
    if not sigma_text and stack.prompt_depends_on_sigma:
        raise NotImplementedError("this pass caches the prompt keys/values, but this model modulates the prompt by σ "
                                  "(LTX-2.3 prompt AdaLN): use the diffusers blocks")


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
    def around(cls, prefix: BlockKV, n: int) -> PrefixBuffer:
        """Buffers for `prefix` followed by n more tokens."""
        b, h, p, d = prefix.k.shape
        k, v = prefix.k.new_empty(b, h, p + n, d), prefix.v.new_empty(b, h, p + n, d)
        k[:, :, :p], v[:, :, :p] = prefix.k, prefix.v
        return cls(k, v, p)


def text_kv(attn: torch.nn.Module, context: torch.Tensor) -> BlockKV:
    """Prompt keys/values of an LTX2Attention (norm_k(to_k(text)), to_v(text)), computed once per edit."""
    return BlockKV(_heads(attn.norm_k(attn.to_k(context)), attn.heads), _heads(attn.to_v(context), attn.heads))


def block_text_kv(block: torch.nn.Module, context: torch.Tensor, temb_prompt: torch.Tensor | None) -> BlockKV:
    """A block's prompt keys/values, with the prompt AdaLN of LTX-2.3/2.5 blocks applied first (its static table,
    plus the σ embedding `temb_prompt` [B,1,2D] where the model has one)."""
    if getattr(block, "cross_attn_adaln", False):
        table = block.prompt_scale_shift_table[None, None].to(context)
        if temb_prompt is not None:
            table = table + temb_prompt.reshape(temb_prompt.shape[0], temb_prompt.shape[1], 2, -1)
        shift, scale = table.unbind(dim=2)
        context = context * (1 + scale) + shift
    return text_kv(block.attn2, context)


def _attention_out(attn: torch.nn.Module, out: torch.Tensor, gate_source: torch.Tensor) -> torch.Tensor:
    """Merge heads, apply the optional per-head gate, project out (as LTX2AudioVideoAttnProcessor)."""
    out = _merge(out)
    if attn.to_gate_logits is not None:
        gates = 2.0 * torch.sigmoid(attn.to_gate_logits(gate_source))
        out = (out.unflatten(2, (attn.heads, -1)) * gates.unsqueeze(-1)).flatten(2, 3)
    return attn.to_out[0](out)


def frame_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame_tokens: int) -> torch.Tensor:
    """Frame-block-causal attention by chunks (frame i attends to frames ≤ i): no mask tensor, about half the work."""
    n = q.shape[2]
    outs = []
    for start in range(0, n, frame_tokens):
        end = min(start + frame_tokens, n)
        outs.append(F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, :end], v[:, :, :end]))
    return torch.cat(outs, dim=2)


def video_block(block: torch.nn.Module, hidden: torch.Tensor, temb: torch.Tensor, rope: Rope, rope_type: str,
                text: BlockKV, text_bias: torch.Tensor | None, *, prefix: BlockKV | None = None,
                self_bias: torch.Tensor | None = None, frame_tokens: int | None = None,
                branch: Branch | None = None, keep_kv: bool = False) -> tuple[torch.Tensor, BlockKV | None]:
    """The video half of an ``LTX2VideoTransformerBlock`` with cached text keys/values.

    ``prefix``: cached keys/values prepended to this block's self-attention keys (one-way prefix); ``self_bias``: an
    additive self-attention mask; ``frame_tokens``: frame-block-causal attention by chunks; ``branch``: a global-context
    cross-attention module and its cached keys/values, whose output is added to the text cross-attention output.
    Returns the new hidden states and, with
    ``keep_kv``, this block's own self-attention keys/values (rotated) for a prefix cache.
    """
    batch = hidden.shape[0]
    table = block.scale_shift_table
    mods = (table[None, None].to(temb.device) + temb.reshape(batch, temb.shape[1], table.shape[0], -1)).unbind(2)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods[:6]
    attn = block.attn1
    normed = _modulate(_norm(block.norm1, hidden), scale_msa, shift_msa)
    q = _heads(_apply_rope(attn.norm_q(attn.to_q(normed)), rope, rope_type), attn.heads)
    k = _heads(_apply_rope(attn.norm_k(attn.to_k(normed)), rope, rope_type), attn.heads)
    v = _heads(attn.to_v(normed), attn.heads)
    own = BlockKV(k, v) if keep_kv else None
    if isinstance(prefix, PrefixBuffer):
        prefix.k[:, :, prefix.prefix_len:].copy_(k)
        prefix.v[:, :, prefix.prefix_len:].copy_(v)
        k, v = prefix.k, prefix.v
    elif prefix is not None:
        k, v = torch.cat([prefix.k, k], dim=2), torch.cat([prefix.v, v], dim=2)
    if frame_tokens is not None:
        out = frame_causal_attention(q, k, v, frame_tokens)
    else:
        mask = None if self_bias is None else self_bias.unsqueeze(1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    hidden = torch.addcmul(hidden, _attention_out(attn, out, normed), gate_msa)
    attn = block.attn2
    normed = _norm(block.norm2, hidden)
    if block.video_cross_attn_adaln:
        shift_q, scale_q, gate_q = mods[6:9]
        normed = _modulate(normed, scale_q, shift_q)
    q = _heads(attn.norm_q(attn.to_q(normed)), attn.heads)
    mask = None if text_bias is None else text_bias.unsqueeze(1)
    out = _attention_out(attn, F.scaled_dot_product_attention(q, text.k, text.v, attn_mask=mask), normed)
    if branch is not None:
        module, kv = branch
        out = out + module(normed, None, None, kv).to(out.dtype)
    if block.video_cross_attn_adaln:
        out = out * gate_q
    hidden = hidden + out
    normed = _modulate(_norm(block.norm3, hidden), scale_mlp, shift_mlp)
    return torch.addcmul(hidden, block.ff(normed), gate_mlp), own


class FastLocal:
    """LocalContextModule.forward with its rotary table and text keys/values cached for one edit."""

    def __init__(self, local: LocalContextModule, tokens: torch.Tensor, coords: torch.Tensor, text: torch.Tensor,
                 text_mask: torch.Tensor | None):
        """Cache what does not change between steps (tokens [B,N,C+1], coords [3,N], text [B,T,D])."""
        cfg = local.config
        self.local = local
        self.dtype = local.proj_in.weight.dtype
        b, n, _ = tokens.shape
        if coords.ndim == 2:
            coords = coords.unsqueeze(0).expand(b, -1, -1)
        self.rope = rope_3d(coords.to(tokens.device), cfg.head_dim, cfg.rope_theta)
        self.x0 = local.proj_in(tokens.to(self.dtype))
        text = text.to(self.dtype)
        self.kv = [blk.attn2.kv(text) for blk in local.blocks]
        self.text_mask = text_mask

    def __call__(self, sigma: torch.Tensor) -> dict[int, torch.Tensor]:
        """Residuals {decoder block: [B,N,model_dim]} at σ [B] (AdaLN recomputed every step)."""
        local, cfg = self.local, self.local.config
        sig = sigma.to(torch.float32).flatten().expand(self.x0.shape[0])
        mods = local.adaln(local.time_embed(timestep_embedding(sig * cfg.timestep_scale, 256).to(self.dtype)))
        x = self.x0
        for blk, kv in zip(local.blocks, self.kv):
            parts = (blk.scale_shift_table[None] + mods.unflatten(-1, (6, -1))).unsqueeze(2).unbind(1)
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = parts
            x = x + gate_msa * blk.attn1(blk.norm1(x) * (1 + scale_msa) + shift_msa, rope=self.rope)
            x = x + blk.attn2(blk.norm2(x), None, key_mask=self.text_mask, kv=kv)
            x = x + gate_mlp * blk.ff(blk.norm3(x) * (1 + scale_mlp) + shift_mlp)
        x = local.norm_out(x)
        return {i: local.out_proj[str(i)](x) for i in cfg.target_blocks}


_COMPILED: dict[str, Callable] = {}


def compiled_video_block(backend: str = "inductor") -> Callable:
    """:func:`video_block` through ``torch.compile`` with dynamic token counts: one compilation (fused elementwise
    kernels) serves every decoder block and every edit of a process; inductor also caches its kernels on disk."""
    fn = _COMPILED.get(backend)
    if fn is None:
        fn = _COMPILED[backend] = torch.compile(video_block, dynamic=True, backend=backend)
    return fn


class FastDecoder:
    """Per-step SCD decoder over a plan's selected tokens with per-edit caches; ``__call__(x, σ)`` = ``decode``."""

    def __init__(self, scd: SCDModel, plan: DecodePlan, *, one_way_prefix: bool | None = None,
                 self_bias: torch.Tensor | None = None, compile: bool | str = False):
        """Precompute the per-edit caches. ``one_way_prefix`` defaults to the model's ``SCDOptions.prefix``;
        ``self_bias`` (uncached path only) is an additive [B,2n,2n] mask; ``compile`` runs the blocks through
        :func:`compiled_video_block` (True: inductor; or a backend name)."""
        self.block_fn = compiled_video_block("inductor" if compile is True else compile) if compile else video_block
        if one_way_prefix is None:
            one_way_prefix = scd.options.prefix == "one_way"
        if not scd.options.concat:
            raise NotImplementedError("fast decoding implements the token-concat decoder (SCDOptions.concat=True)")
        if scd.decoder_block_hooks:
            raise NotImplementedError("decoder block hooks are not replayed by the fast path: use SCDModel.decode")
        if one_way_prefix and self_bias is not None:
            raise ValueError("self_bias applies to the uncached path; the one-way prefix has its own mask")
        s = scd.stack
        self.scd, self.stack, self.plan = scd, s, plan
        self.split = scd.split_layer
        self.blocks = list(s.model.transformer_blocks)[self.split:]
        self.rope_type = s.model.transformer_blocks[0].attn1.rope_type
        self.one_way = one_way_prefix
        self.self_bias = self_bias
        batch = plan.prefix.shape[0]
        self.n = plan.index.numel()
        text = plan.text.repeat(batch)
        bias = text.video_bias
        if bias is not None and bias.shape[1] > 1 and one_way_prefix:
            # per-token prompt masks (several regions) come doubled for [prefix; noisy]: split them
            self.prefix_text_bias, self.text_bias = bias[:, :self.n], bias[:, self.n:]
        else:
            self.prefix_text_bias = self.text_bias = bias
        self.text_video = text.video
        self.sigma_text = s.prompt_depends_on_sigma
        self.text_kv = None if self.sigma_text else [block_text_kv(b, text.video, None) for b in self.blocks]
        self.global_kv = dict(plan.extras.get("global_kv", {}))
        self.branches = [self._branch(rel) for rel in range(len(self.blocks))]
        self.rope = s.rope(plan.coords)
        self.rope_concat = plan.rotary
        self.local = None
        if scd.local is not None:
            tokens = plan.extras["local_tokens"].expand(batch, -1, -1)
            self.local = FastLocal(scd.local, tokens, plan.extras["local_coords"], text.video, text.key_bias())
        self.prefix_kv: list[BlockKV] | None = None
        self.prefix = plan.prefix.contiguous()
        self.prefix_temb = plan.prefix_time[:, :1].contiguous()
        if one_way_prefix:
            prefix_text = self.text_kv
            if prefix_text is None:  # the prefix's prompt is modulated at its own σ=0 (see SCDModel.decode)
                zero = torch.zeros(batch, device=s.device)
                temb_prompt = s.time(zero, zero).temb_prompt
                prefix_text = [block_text_kv(b, text.video, temb_prompt) for b in self.blocks]
            self.prefix_kv = [PrefixBuffer.around(kv, self.n) for kv in self._prefix_pass(prefix_text)]

    def _branch(self, rel: int) -> Branch | None:
        """The global-context branch of decoder block `rel` with its keys/values at the decoder's batch, or None."""
        kv = self.global_kv.get(rel)
        if kv is None:
            return None
        k, v = kv
        batch = self.plan.prefix.shape[0]
        if k.shape[0] != batch:
            k, v = k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)
        return self.scd.global_context.branch_module(rel), (k, v)

    def _prefix_pass(self, text: list[BlockKV]) -> list[BlockKV]:
        """Run the prefix alone through the decoder blocks at σ=0 and keep every block's self-attention keys/values
        (once per edit)."""
        cache = []
        hidden = self.prefix
        for rel, block in enumerate(self.blocks):
            hidden, own = self.block_fn(block, hidden, self.prefix_temb, self.rope, self.rope_type, text[rel],
                                        self.prefix_text_bias, branch=self.branches[rel], keep_kv=True)
            cache.append(own)
        return cache

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Velocity [B,n,C] of the selected noisy tokens x [B,n,C] at σ [B] (float32 σ on the model's device)."""
        s, n = self.stack, self.n
        sigma = sigma.to(s.device, torch.float32)
        time = s.time(sigma, sigma)
        noisy = s.model.proj_in(x.to(s.device, s.dtype))
        residuals = self.local(sigma) if self.local is not None else {}
        text = self.text_kv
        if text is None:
            text = [block_text_kv(b, self.text_video, time.temb_prompt) for b in self.blocks]
        prefix_kv = self.prefix_kv
        if self.one_way:
            hidden, temb, rope = noisy, time.temb, self.rope
        else:
            hidden = torch.cat([self.plan.prefix, noisy], dim=1)
            temb = torch.cat([self.plan.prefix_time, time.temb.expand(-1, n, -1)], dim=1)
            rope = self.rope_concat
        for rel, block in enumerate(self.blocks):
            prefix = prefix_kv[rel] if prefix_kv is not None else None
            hidden, _ = self.block_fn(block, hidden, temb, rope, self.rope_type, text[rel], self.text_bias,
                                      prefix=prefix, self_bias=self.self_bias, branch=self.branches[rel])
            r = residuals.get(rel)
            if r is not None:
                if self.one_way:
                    hidden = hidden + r.to(hidden.dtype)
                else:
                    hidden = torch.cat([hidden[:, :-n], hidden[:, -n:] + r.to(hidden.dtype)], dim=1)
        if not self.one_way:
            hidden = hidden[:, n:]
        return s.head(hidden, time.embedded)


class FastStack:
    """Whole-stack passes (baseline full forward, SCD encoder) through :func:`video_block` with cached text K/V."""

    def __init__(self, stack: LTX2Stack, text: TextConditioning, blocks: range | None = None,
                 temb_prompt: torch.Tensor | None = None):
        """Cache the projected prompt's keys/values for `blocks` (default: all); a model that modulates the prompt by
        σ (LTX-2.3) needs that σ's `temb_prompt`, which fixes the σ of every pass (e.g. 0 for the SCD encoder)."""
        if temb_prompt is None:
            check_supported(stack, sigma_text=False)
        self.sigma_fixed = temb_prompt is not None
        self.stack = stack
        self.range = blocks if blocks is not None else range(stack.num_layers)
        self.rope_type = stack.model.transformer_blocks[0].attn1.rope_type
        ctx: TextContext = stack.text(text)
        self.text_bias = ctx.video_bias
        self.text_kv = {i: block_text_kv(stack.model.transformer_blocks[i], ctx.video, temb_prompt)
                        for i in self.range}

    def run(self, hidden: torch.Tensor, temb: torch.Tensor, rope: Rope, frame_tokens: int | None = None
            ) -> torch.Tensor:
        """Blocks of `self.range` over hidden [B,N,D] (frame-block-causal when `frame_tokens` is given)."""
        for i in self.range:
            hidden, _ = video_block(self.stack.model.transformer_blocks[i], hidden, temb, rope, self.rope_type,
                                    self.text_kv[i], self.text_bias, frame_tokens=frame_tokens)
        return hidden

    def rope(self, grid: tuple[int, int, int], batch: int = 1, fps: float = 24.0) -> Rope:
        """Rotary tables of every token of a grid (compute once: building them copies from the host)."""
        s = self.stack
        return s.rope(s.video_coords(grid, batch, fps))

    def full_step(self, x: torch.Tensor, sigma: torch.Tensor, rope: Rope) -> torch.Tensor:
        """The plain model on all tokens: velocity [B,N,C] of x [B,N,C] at σ [B] (the full-attention baseline)."""
        s = self.stack
        if self.sigma_fixed:
            raise NotImplementedError("this FastStack's prompt keys/values belong to one σ; full_step needs a model "
                                      "whose prompt is not modulated by σ")
        sigma = sigma.to(s.device, torch.float32)
        time = s.time(sigma, sigma)
        hidden = self.run(s.model.proj_in(x.to(s.device, s.dtype)), time.temb, rope)
        return s.head(hidden, time.embedded)


def fast_encode(scd: SCDModel, background: torch.Tensor, grid: tuple[int, int, int], text: TextConditioning
                ) -> torch.Tensor:
    """``SCDModel.encode`` with frame-block-causal attention computed by chunks (no [N,N] mask) and no audio stream."""
    s = scd.stack
    batch = background.shape[0]
    sigma = torch.zeros(batch, device=s.device, dtype=torch.float32)
    time = s.time(sigma, sigma)
    fast = FastStack(s, text, range(scd.split_layer), time.temb_prompt)
    rope = s.rope(s.video_coords(grid, batch, scd.options.fps))
    hidden = s.model.proj_in(background.to(s.device, s.dtype))
    frame_tokens = grid[1] * grid[2] if scd.options.causal else None
    hidden = fast.run(hidden, time.temb, rope, frame_tokens=frame_tokens)
    return shift_one_frame(hidden, grid) if scd.options.shift else hidden


class GraphedStep:
    """A step function replayed as a CUDA graph: static input buffers, one capture, ``__call__`` copies and replays."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                 sigma: torch.Tensor, warmup: int = 1):
        """Warm `fn` up on a side stream, then capture it on example inputs (CUDA tensors)."""
        self.x, self.sigma = x.clone(), sigma.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(self.x, self.sigma)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = fn(self.x, self.sigma)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Run the captured step on new inputs (the output buffer is reused: copy it if you keep it)."""
        self.x.copy_(x)
        self.sigma.copy_(sigma)
        self.graph.replay()
        return self.out
