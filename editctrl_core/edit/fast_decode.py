"""Fast SCD paths with per-edit caches: the same arithmetic as :class:`~editctrl_core.edit.scd.SCDModel`, less repeated work.

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
graph (no per-kernel launch cost). Across edits (per process, checked by value against the inputs, the weights and
the LoRA hooks): :class:`StepCache` keeps the last prepared step of each kind with its graph — the same edit again
reuses everything, another edit of the same token count refills the captured buffers — and :class:`EncoderCache`
the SCD encoder output. Cold edits avoid cuDNN's per-shape attention plans where flash attention costs less
(:func:`~editctrl_core.edit.prefix_attention.attention`), and the rotary embedding and the feed-forward GELU run in
fewer kernels with the same arithmetic. The self-attention arithmetic under the one-way prefix (projections, rotary
embedding, [prefix; own] keys/values, gated output) is :mod:`~editctrl_core.edit.prefix_attention`'s, the same
functions the reference processors of :mod:`~editctrl_core.edit.kv_cache` call; this module adds the in-place prefix
buffers and the fused norm/modulation/feed-forward around them. LTX-2.3/2.5 blocks (gated attention, prompt AdaLN)
are reproduced too: LTX-2.5's prompt modulation is static, so everything above is cached; LTX-2.3 modulates the prompt by σ, so the noisy
tokens' prompt keys/values are recomputed every step (the one-way prefix's use σ=0 and stay cached). Perturbed
attention (STG) is not used by the edit sampler.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.activations import GELU

from ..conditioning.text import TextConditioning
from .adapters import LocalContextModule
from .prefix_attention import (
    BlockKV,
    PrefixBuffer,
    Rope,
    SplitRope,
    attention,
    attention_out,
    keys_with_prefix,
    project_kv,
    project_query,
    split_rope,
)
from .scd import DEFAULT_FPS, DecodePlan, LTX2Stack, SCDModel, TextContext, TimeContext, per_prompt, shift_one_frame

Branch = tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]
STEPS_HINT = 30  # steps an edit runs (LTX-2's default), for a step's calls per edit


def _feed_forward(ff: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A block's feed-forward; on CUDA the tanh-GELU runs in the first matmul's epilogue (cuBLASLt) instead of as a
    separate pass over the 4×-wide activations. Falls back to the module when anything else is attached (a LoRA's
    forward hook on the projection, another layer type)."""
    net = getattr(ff, "net", None)
    if (x.is_cuda and net is not None and len(net) >= 3 and not torch.compiler.is_compiling()
            and isinstance(net[0], GELU) and net[0].approximate == "tanh" and type(net[0].proj) is torch.nn.Linear
            and net[0].proj.bias is not None and type(net[2]) is torch.nn.Linear
            and all(isinstance(m, torch.nn.Dropout) and not m.training for i, m in enumerate(net) if i not in (0, 2))
            and not (net[0]._forward_hooks or net[0]._forward_pre_hooks or net[0].proj._forward_hooks
                     or net[0].proj._forward_pre_hooks or ff._forward_hooks or ff._forward_pre_hooks)
            and net[0].proj.weight.dtype == x.dtype):
        proj = net[0].proj
        hidden = torch._addmm_activation(proj.bias, x.reshape(-1, x.shape[-1]), proj.weight.t(), use_gelu=True)
        return net[2](hidden).view(*x.shape[:-1], -1)
    return ff(x)


def _norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A block's affine-free RMSNorm as one fused kernel (diffusers' runs five, through float32 copies)."""
    if getattr(norm, "weight", None) is None:
        return F.rms_norm(x, (x.shape[-1],), eps=norm.eps)
    return norm(x)


def _modulate(normed: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """AdaLN modulation normed·(1 + scale) + shift in one kernel."""
    return torch.addcmul(shift, normed, 1 + scale)


def live_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    """An additive attention bias, or None when it masks nothing (all zeros: e.g. a prompt whose every token is
    valid, as LTX-2's connectors return it), so attention can take the unmasked flash kernels. Once per edit."""
    if bias is None or bool(bias.any()):
        return bias
    return None


def check_supported(stack: LTX2Stack, sigma_text: bool = True) -> None:
    """Raise NotImplementedError for what a fast path does not reproduce exactly (``sigma_text``: whether it can
    recompute σ-dependent prompt keys/values every step)."""
    if not sigma_text and stack.prompt_depends_on_sigma:
        raise NotImplementedError("this pass caches the prompt keys/values, but this model modulates the prompt by σ "
                                  "(LTX-2.3 prompt AdaLN): use the diffusers blocks")


def block_text_kv(block: torch.nn.Module, context: torch.Tensor, temb_prompt: torch.Tensor | None) -> BlockKV:
    """A block's prompt keys/values, with the prompt AdaLN of LTX-2.3/2.5 blocks applied first (its static table,
    plus the σ embedding `temb_prompt` [B,1,2D] where the model has one)."""
    if getattr(block, "cross_attn_adaln", False):
        table = block.prompt_scale_shift_table[None, None].to(context)
        if temb_prompt is not None:
            table = table + temb_prompt.reshape(temb_prompt.shape[0], temb_prompt.shape[1], 2, -1)
        shift, scale = table.unbind(dim=2)
        context = context * (1 + scale) + shift
    return project_kv(block.attn2, context)


def frame_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame_tokens: int,
                           repeats: int | None = None) -> torch.Tensor:
    """Frame-block-causal attention by chunks (frame i attends to frames ≤ i): no mask tensor, about half the work."""
    n = q.shape[2]
    outs = []
    for start in range(0, n, frame_tokens):
        end = min(start + frame_tokens, n)
        outs.append(attention(q[:, :, start:end], k[:, :, :end], v[:, :, :end], repeats=repeats))
    return torch.cat(outs, dim=2)


def video_block(block: torch.nn.Module, hidden: torch.Tensor, temb: torch.Tensor, rope: Rope, rope_type: str,
                text: BlockKV, text_bias: torch.Tensor | None, *, prefix: BlockKV | None = None,
                self_bias: torch.Tensor | None = None, frame_tokens: int | None = None,
                branch: Branch | None = None, keep_kv: bool = False,
                repeats: int | None = None) -> tuple[torch.Tensor, BlockKV | None]:
    """The video half of an ``LTX2VideoTransformerBlock`` with cached text keys/values.

    ``prefix``: cached keys/values prepended to this block's self-attention keys (one-way prefix); ``self_bias``: an
    additive self-attention mask; ``frame_tokens``: frame-block-causal attention by chunks; ``branch``: a global-context
    cross-attention module and its cached keys/values, whose output is added to the text cross-attention output.
    ``repeats``: how often this block's shapes run per edit (the attention kernel choice, see :func:`attention`).
    Returns the new hidden states and, with ``keep_kv``, this block's own self-attention keys/values (rotated) for
    a prefix cache.
    """
    batch = hidden.shape[0]
    table = block.scale_shift_table
    mods = (table[None, None].to(temb.device) + temb.reshape(batch, temb.shape[1], table.shape[0], -1)).unbind(2)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods[:6]
    attn = block.attn1
    normed = _modulate(_norm(block.norm1, hidden), scale_msa, shift_msa)
    q = project_query(attn, normed, rope, rope_type)
    kv, own = keys_with_prefix(attn, normed, rope, rope_type, prefix, keep_kv)
    if frame_tokens is not None:
        out = frame_causal_attention(q, kv.k, kv.v, frame_tokens, repeats)
    else:
        out = attention(q, kv.k, kv.v, None if self_bias is None else self_bias.unsqueeze(1), repeats=repeats)
    hidden = torch.addcmul(hidden, attention_out(attn, out, normed), gate_msa)
    attn = block.attn2
    normed = _norm(block.norm2, hidden)
    if block.video_cross_attn_adaln:
        shift_q, scale_q, gate_q = mods[6:9]
        normed = _modulate(normed, scale_q, shift_q)
    q = project_query(attn, normed)
    mask = None if text_bias is None else text_bias.unsqueeze(1)
    out = attention_out(attn, attention(q, text.k, text.v, mask, repeats=repeats), normed)
    if branch is not None:
        module, branch_kv = branch
        out = out + module(normed, None, None, branch_kv).to(out.dtype)
    if block.video_cross_attn_adaln:
        out = out * gate_q
    hidden = hidden + out
    normed = _modulate(_norm(block.norm3, hidden), scale_mlp, shift_mlp)
    return torch.addcmul(hidden, _feed_forward(block.ff, normed), gate_mlp), own


def prefix_pass(block_fn: Callable, blocks: list[torch.nn.Module], hidden: torch.Tensor, temb: torch.Tensor,
                rope: SplitRope | Rope, rope_type: str, text: list[BlockKV], text_bias: torch.Tensor | None, n: int,
                branches: list[Branch | None] | None = None,
                into: list[PrefixBuffer] | None = None) -> list[PrefixBuffer]:
    """Once per edit, the clean prefix tokens `hidden` alone through `blocks` at σ=0 (`temb`): each block's
    self-attention keys/values go straight into a prefix buffer with room for a step's n tokens (`into`'s when
    given), so only one block's own copy exists at a time (the one-way prefix of SCD and of the mask-local mode)."""
    cache = []
    for i, block in enumerate(blocks):
        hidden, own = block_fn(block, hidden, temb, rope, rope_type, text[i], text_bias,
                               branch=None if branches is None else branches[i], keep_kv=True, repeats=len(blocks))
        cache.append(PrefixBuffer.around(own, n, None if into is None else into[i]))
        del own
    return cache


class PrefixStep(ABC):
    """A fast step with per-edit caches (prompt keys/values, rotary tables, prefix buffers) that a
    :class:`StepCache` refills in place for another edit of the same layout."""

    stack: LTX2Stack
    blocks: list[torch.nn.Module]
    built: bool
    sigma_text: bool
    rope: SplitRope
    text_bias: torch.Tensor | None
    text_video: torch.Tensor
    text_kv: list[BlockKV] | None
    prefix_kv: list[PrefixBuffer | None] | None
    #: the prefix no longer holds what :meth:`build` computed (a refresh rewrote it): recompute before reuse
    dirty: bool = False

    @abstractmethod
    def build(self, prefix_into: list | None = None) -> PrefixStep:
        """Compute the per-edit caches (the prefix pass writing into `prefix_into` when given)."""

    def cache_text(self) -> None:
        """The blocks' prompt keys/values, once per edit unless the prompt is modulated by σ (LTX-2.3)."""
        self.text_kv = None if self.sigma_text else [block_text_kv(b, self.text_video, None) for b in self.blocks]

    def begin(self, sigma: torch.Tensor) -> tuple[torch.Tensor, TimeContext]:
        """(σ [B] as float32 on the model's device, its modulation) for a step, building deferred caches first."""
        if not self.built:
            self.build()
        sigma = sigma.to(self.stack.device, torch.float32)
        return sigma, self.stack.time(sigma, sigma)

    def text_at(self, temb_prompt: torch.Tensor | None) -> list[BlockKV]:
        """The blocks' prompt keys/values at the σ of `temb_prompt`: the per-edit ones where they are cached."""
        if self.text_kv is not None:
            return self.text_kv
        return [block_text_kv(b, self.text_video, temb_prompt) for b in self.blocks]

    def step_tensors(self) -> list[torch.Tensor | None]:
        """The per-edit tensors a step reads besides the prefix buffers (what a refill copies)."""
        out: list[torch.Tensor | None] = [*self.rope, self.text_bias, self.text_video]
        for kv in self.text_kv or []:
            out += [kv.k, kv.v]
        return out

    def refill_from(self, other: PrefixStep) -> None:
        """Load another edit's caches into this step's tensors (same layout), so a graph captured on this step
        replays the other edit: its prefix pass writes straight into this step's buffers."""
        other.build(prefix_into=self.prefix_kv)
        copy_into(self.step_tensors(), other.step_tensors())
        self.dirty = False


class FastLocal:
    """LocalContextModule with its per-edit part (context embedding, rotary table, text keys/values) cached."""

    def __init__(self, local: LocalContextModule, tokens: torch.Tensor, coords: torch.Tensor, text: torch.Tensor,
                 text_mask: torch.Tensor | None):
        """Cache what does not change between steps (tokens [B,N,C+1], coords [3,N], text [B,T,D])."""
        self.local = local
        self.prepared = local.prepare(tokens, coords, text, text_mask)

    def __call__(self, sigma: torch.Tensor, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Hints {decoder block: [B,N,model_dim]} from this step's noisy tokens x [B,N,C] at σ [B]."""
        return self.local.step(self.prepared, x, sigma)


_COMPILED: dict[str, Callable] = {}


def compiled_video_block(backend: str = "inductor") -> Callable:
    """:func:`video_block` through ``torch.compile`` with dynamic token counts: one compilation (fused elementwise
    kernels) serves every decoder block and every edit of a process; inductor also caches its kernels on disk."""
    fn = _COMPILED.get(backend)
    if fn is None:
        fn = _COMPILED[backend] = torch.compile(video_block, dynamic=True, backend=backend)
    return fn


def fast_decoder_unsupported(scd: SCDModel) -> str | None:
    """Why :class:`FastDecoder` cannot reproduce ``scd.decode`` exactly, or None when it can: asked before building,
    so a caller chooses its path up front (and can say why) instead of catching an error."""
    if not scd.options.concat:
        return "fast decoding implements the token-concat decoder (SCDOptions.concat=True)"
    if scd.decoder_block_hooks:
        return "decoder block hooks are not replayed by the fast path: use SCDModel.decode"
    return None


class FastDecoder(PrefixStep):
    """Per-step SCD decoder over a plan's selected tokens with per-edit caches; ``__call__(x, σ)`` = ``decode``."""

    def __init__(self, scd: SCDModel, plan: DecodePlan, *, one_way_prefix: bool | None = None,
                 self_bias: torch.Tensor | None = None, compile: bool | str = False, defer: bool = False):
        """Precompute the per-edit caches. ``one_way_prefix`` defaults to the model's ``SCDOptions.prefix``;
        ``self_bias`` (uncached path only) is an additive [B,2n,2n] mask; ``compile`` runs the blocks through
        :func:`compiled_video_block` (True: inductor; or a backend name). ``defer`` leaves the caches (text
        keys/values, the prefix pass) to :meth:`build`, so a :class:`StepCache` can first check whether a prepared
        step of the same edit already holds them."""
        self.block_fn = compiled_video_block("inductor" if compile is True else compile) if compile else video_block
        self.compile = compile
        if one_way_prefix is None:
            one_way_prefix = scd.options.prefix == "one_way"
        unsupported = fast_decoder_unsupported(scd)
        if unsupported is not None:
            raise NotImplementedError(unsupported)
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
        self.batch = batch
        self.n = plan.index.numel()
        text = plan.text.repeat(batch)
        self.text = text
        bias = live_bias(text.video_bias)
        if bias is not None and bias.shape[1] > 1 and one_way_prefix:
            # per-token prompt masks (several regions) come doubled for [prefix; noisy]: split them
            self.prefix_text_bias, self.text_bias = bias[:, :self.n], bias[:, self.n:]
        else:
            self.prefix_text_bias = self.text_bias = bias
        self.text_video = text.video
        self.sigma_text = s.prompt_depends_on_sigma
        self.global_kv = dict(plan.extras.get("global_kv", {}))
        self.branches = [self._branch(rel) for rel in range(len(self.blocks))]
        self.rope = split_rope(s.rope(plan.coords), self.rope_type)
        self.rope_concat = plan.rotary if one_way_prefix else split_rope(plan.rotary, self.rope_type)
        self.local = None
        self.text_kv: list[BlockKV] | None = None
        self.prefix_kv: list[PrefixBuffer] | None = None
        self.prefix = plan.prefix.contiguous()
        self.prefix_temb = plan.prefix_time[:, :1].contiguous()
        self.built = False
        if not defer:
            self.build()

    @property
    def reusable(self) -> bool:
        """Whether a :class:`StepCache` may refill this step's buffers for another edit of the same layout (the
        one-way prefix without adapters; other configurations are prepared afresh every edit)."""
        return (self.one_way and self.self_bias is None and self.scd.local is None
                and self.scd.global_context is None)

    def modules(self) -> list[torch.nn.Module]:
        """The modules whose weights the step reads."""
        return [m for m in (self.stack.model, self.scd.local, self.scd.global_context) if m is not None]

    def inputs(self) -> list[torch.Tensor | None]:
        """Everything besides the weights that the per-edit caches are computed from."""
        return [self.plan.coords, self.prefix, self.prefix_temb, self.text_video, self.text.video_bias]

    def layout(self) -> tuple:
        """What a captured step depends on beyond its inputs' values."""
        return ("scd", self.split, self.one_way, self.n, self.batch, self.sigma_text, self.rope_type,
                str(self.compile), tensor_layout([self.text_bias, self.prefix_text_bias]))

    def build(self, prefix_into: list[PrefixBuffer] | None = None) -> FastDecoder:
        """Compute the per-edit caches: prompt keys/values and, with the one-way prefix, the prefix pass (its
        keys/values written into `prefix_into` when given)."""
        s, batch, text = self.stack, self.batch, self.text
        self.cache_text()
        if self.scd.local is not None:
            tokens = self.plan.extras["local_tokens"].expand(batch, -1, -1)
            self.local = FastLocal(self.scd.local, tokens, self.plan.extras["local_coords"], text.video,
                                   text.key_bias())
        if self.one_way:  # the prefix's prompt is modulated at its own σ=0 (see SCDModel.decode)
            self.prefix_kv = self._prefix_pass(self.text_at(s.clean_time(batch).temb_prompt), prefix_into)
        self.built = True
        return self

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

    def _prefix_pass(self, text: list[BlockKV], into: list[PrefixBuffer] | None = None) -> list[PrefixBuffer]:
        """Run the prefix alone through the decoder blocks at σ=0; every block's self-attention keys/values go
        straight into its prefix buffer (`into`'s when given; once per edit)."""
        return prefix_pass(self.block_fn, self.blocks, self.prefix, self.prefix_temb, self.rope, self.rope_type, text,
                           self.prefix_text_bias, self.n, self.branches, into)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Velocity [B,n,C] of the selected noisy tokens x [B,n,C] at σ [B] (float32 σ on the model's device)."""
        s, n = self.stack, self.n
        sigma, time = self.begin(sigma)
        noisy = s.model.proj_in(x.to(s.device, s.dtype))
        residuals = self.local(sigma, x) if self.local is not None else {}
        text = self.text_at(time.temb_prompt)
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
                                      prefix=prefix, self_bias=self.self_bias, branch=self.branches[rel],
                                      repeats=len(self.blocks) * STEPS_HINT)
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
        self.text_bias = live_bias(ctx.video_bias)
        self.text_kv = {i: block_text_kv(stack.model.transformer_blocks[i], ctx.video, temb_prompt)
                        for i in self.range}

    def run(self, hidden: torch.Tensor, temb: torch.Tensor, rope: Rope, frame_tokens: int | None = None,
            once: bool = False) -> torch.Tensor:
        """Blocks of `self.range` over hidden [B,N,D] (frame-block-causal when `frame_tokens` is given; `once`: a
        once-per-edit pass such as the SCD encoder)."""
        repeats = len(self.range) if once else None
        for i in self.range:
            hidden, _ = video_block(self.stack.model.transformer_blocks[i], hidden, temb, rope, self.rope_type,
                                    self.text_kv[i], self.text_bias, frame_tokens=frame_tokens, repeats=repeats)
        return hidden

    def rope(self, grid: tuple[int, int, int], batch: int = 1, fps: float = DEFAULT_FPS) -> Rope | SplitRope:
        """Rotary tables of every token of a grid (compute once: building them copies from the host)."""
        s = self.stack
        return split_rope(s.rope(s.video_coords(grid, batch, fps)), self.rope_type)

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


def fast_encode(scd: SCDModel, background: torch.Tensor, grid: tuple[int, int, int], text: TextConditioning,
                fps: float = DEFAULT_FPS) -> torch.Tensor:
    """``SCDModel.encode`` with frame-block-causal attention computed by chunks (no [N,N] mask) and no audio stream."""
    s = scd.stack
    background = per_prompt(background, text)
    batch = background.shape[0]
    time = s.clean_time(batch)
    fast = FastStack(s, text, range(scd.split_layer), time.temb_prompt)
    rope = split_rope(s.rope(s.video_coords(grid, batch, fps)), fast.rope_type)
    hidden = s.model.proj_in(background.to(s.device, s.dtype))
    frame_tokens = grid[1] * grid[2] if scd.options.causal else None
    hidden = fast.run(hidden, time.temb, rope, frame_tokens=frame_tokens, once=True)
    return shift_one_frame(hidden, grid) if scd.options.shift else hidden


_ENCODER_WARMED: set[tuple[str, torch.dtype, int]] = set()


def warm_encoder_kernels(scd: SCDModel, text: TextConditioning, fps: float = DEFAULT_FPS) -> float:
    """Run :func:`fast_encode` once on a one-token clip, once per process, device, dtype and model width: the first
    launch of each kernel the model's blocks use loads its CUDA module, ≈0.4 s in all at 19B on an H200 (measured:
    a cold encoder pass 0.69 s, after this 0.27 s, a new background 0.24 s). A per-process cost like loading the
    weights, so it belongs to making the model ready, not to the first edit. Returns the seconds spent (0 off CUDA
    or when already done)."""
    s = scd.stack
    key = (str(s.device), s.dtype, s.model.config.num_attention_heads * s.model.config.attention_head_dim)
    if s.device.type != "cuda" or key in _ENCODER_WARMED:
        return 0.0
    start = time.perf_counter()
    one = torch.zeros(1, 1, s.model.config.in_channels)
    with torch.no_grad():
        fast_encode(scd, one, (1, 1, 1), text, fps)
    torch.cuda.synchronize(s.device)
    _ENCODER_WARMED.add(key)
    return time.perf_counter() - start


class GraphedStep:
    """A step function replayed as a CUDA graph: static input buffers, one capture, ``__call__`` copies and replays."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                 sigma: torch.Tensor, warmup: int = 1):
        """Warm `fn` up on a side stream, then capture it on example inputs (CUDA tensors). ``warm_output`` keeps
        the last warm-up call's result: fn at the example inputs, which a caller whose first step is at those inputs
        can use instead of replaying (one step less per capture)."""
        self.x, self.sigma = x.clone(), sigma.clone()
        self.warm_output: torch.Tensor | None = None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.warm_output = fn(self.x, self.sigma)
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


# ---------------------------------------------------------------------------------------------------------------
# Caches across edits. A prepared step (its per-edit caches and its CUDA graph) and the SCD encoder output are kept
# per process, so the same edit run again (a new seed, cfg, or step count: ComfyUI re-runs only the sampler and
# hands it the same context and prompts) skips the encoder, the prefix pass and the capture, and another edit of
# the same layout refills the captured graph's buffers instead of capturing again. Every reuse is checked by value
# (torch.equal on the inputs) against a signature of the weights (storage and version of every parameter), the
# forward hooks (LoRAs), the attention backends and the grad/precision switches, so it is exact by construction.


def copy_into(dst: list[torch.Tensor | None], src: list[torch.Tensor | None]) -> None:
    """Copy tensors pairwise (same layout; None where both are None)."""
    if len(dst) != len(src):
        raise ValueError("step layouts differ")
    for a, b in zip(dst, src):
        if (a is None) != (b is None):
            raise ValueError("step layouts differ")
        if a is not None and a is not b:
            a.copy_(b)


def tensor_layout(tensors: list[torch.Tensor | None]) -> tuple:
    """Shapes, dtypes and devices of a tensor list (None kept)."""
    return tuple(None if t is None else (tuple(t.shape), t.dtype, t.device) for t in tensors)


def _equal(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> bool:
    """Whether two tensor lists hold the same values (same layout assumed)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x is y:
            continue
        if x is None or y is None or x.shape != y.shape or x.dtype != y.dtype or x.device != y.device:
            return False
        if not torch.equal(x, y):
            return False
    return True


def _tensor_signature(t: torch.Tensor) -> tuple:
    """Storage, version (−1 for inference tensors, which have none), dtype and shape of a weight."""
    return (t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype, tuple(t.shape))


def module_signature(modules: list[torch.nn.Module]) -> tuple:
    """What a cached result depends on in the modules: the storage and version of every parameter and buffer (a
    weight replaced, moved or changed in place changes it) and the forward hooks (LoRAs apply as hooks).

    Tensors made under ``torch.inference_mode`` (ComfyUI runs nodes in it, so a model built by a loader node has
    them) keep no version counter: for them the storage alone is checked — ComfyUI's weight patching swaps the
    parameter tensors, which changes it."""
    params = []
    hooks = []
    for module in modules:
        for sub in module.modules():
            if sub._forward_hooks or sub._forward_pre_hooks:
                hooks.append((id(sub), tuple(sub._forward_hooks), tuple(sub._forward_pre_hooks)))
            for p in sub._parameters.values():
                if p is not None:
                    params.append(_tensor_signature(p))
            for b in sub._buffers.values():
                if b is not None:
                    params.append(_tensor_signature(b))
    from torch.nn.modules import module as nn_module

    global_hooks = (tuple(nn_module._global_forward_hooks), tuple(nn_module._global_forward_pre_hooks))
    return tuple(id(m) for m in modules), tuple(params), tuple(hooks), global_hooks


def backend_signature() -> tuple:
    """Switches that change which kernels a step runs (a captured graph keeps the ones it was captured with)."""
    cuda = torch.backends.cuda
    return (torch.is_grad_enabled(), torch.is_autocast_enabled(), cuda.flash_sdp_enabled(),
            cuda.mem_efficient_sdp_enabled(), cuda.math_sdp_enabled(),
            getattr(cuda, "cudnn_sdp_enabled", lambda: None)(), cuda.matmul.allow_tf32,
            cuda.matmul.allow_bf16_reduced_precision_reduction, torch.backends.cudnn.allow_tf32)


@dataclass
class _Prepared:
    key: tuple
    signature: tuple
    step: object
    graphed: GraphedStep | None
    inputs: list


class StepCache:
    """One prepared step per kind ("scd", "training_free") per process: its caches and CUDA graph.

    :meth:`prepare` takes a freshly planned step built with ``defer=True`` and returns what to call: the cached one
    when the edit is the same (inputs equal by value: nothing is recomputed), the cached one refilled when only the
    layout matches (caches recomputed into the captured buffers: no capture), else the fresh one, built and
    captured. Holding a step keeps its prefix keys/values and graph memory until the next edit of that kind or
    :meth:`clear`; set ``EDITCTRL_STEP_CACHE=0`` to prepare every edit afresh (``all``: cache on the CPU too).
    """

    def __init__(self) -> None:
        self.entries: dict[str, _Prepared] = {}
        setting = os.environ.get("EDITCTRL_STEP_CACHE", "1")
        self.enabled = setting != "0"
        self.on_cpu = setting == "all"  # CUDA only by default; tests and CPU measurements turn it on
        self.last = ""
        #: the step object the last :meth:`prepare` handed out (the cached one when reused): whose buffers a
        #: refresh must write
        self.current: object | None = None

    def active(self, device: torch.device) -> bool:
        """Whether edits on `device` are cached (CUDA by default)."""
        return self.enabled and (device.type == "cuda" or self.on_cpu)

    def clear(self) -> None:
        """Drop every prepared step (frees its buffers and graphs)."""
        self.entries.clear()

    def prepare(self, kind: str, fresh, example: tuple[torch.Tensor, torch.Tensor], graph: bool
                ) -> tuple[Callable, torch.Tensor | None]:
        """(step to call, or None) for `fresh` (deferred). The second item is the warm-up output of a new capture,
        i.e. the step at the example inputs, or None."""
        device = example[0].device
        reuse = self.active(device) and fresh.reusable
        self.current = fresh
        if not reuse:
            self.entries.pop(kind, None)
            self.last = "fresh"
            return self._new(fresh, example, graph)
        key = (fresh.layout(), tensor_layout(fresh.inputs()), tuple(id(m) for m in fresh.modules()))
        signature = (module_signature(fresh.modules()), backend_signature())
        entry = self.entries.get(kind)
        if entry is not None and entry.key == key and entry.signature == signature:
            inputs = fresh.inputs()
            self.current = entry.step
            same = _equal(entry.inputs, inputs)
            if same and not entry.step.dirty:
                self.last = "same edit"
                return entry.graphed or entry.step, None
            entry.step.refill_from(fresh)
            entry.inputs = inputs
            self.last = "same edit, prefix recomputed" if same else "refilled"
            return entry.graphed or entry.step, None
        self.entries.pop(kind, None)  # free the old step's buffers and graph before building the new one
        self.last = "captured" if graph else "built"
        step, first = self._new(fresh, example, graph)
        self.entries[kind] = _Prepared(key, signature, fresh, step if graph else None, fresh.inputs())
        return step, first

    @staticmethod
    def _new(fresh, example: tuple[torch.Tensor, torch.Tensor], graph: bool) -> tuple[Callable, torch.Tensor | None]:
        """Build `fresh` and capture it (on CUDA)."""
        if not fresh.built:
            fresh.build()
        if not graph:
            return fresh, None
        graphed = GraphedStep(fresh, *example)
        return graphed, graphed.warm_output


STEP_CACHE = StepCache()


@dataclass
class _Encoded:
    key: tuple
    signature: tuple
    inputs: list
    context: torch.Tensor


class EncoderCache:
    """The last SCD encoder output per process, reused when the same background and prompt come again with the
    same weights (value-checked like :class:`StepCache`: every prompt row, the negative included, and the clip's
    frame rate)."""

    def __init__(self) -> None:
        self.entry: _Encoded | None = None
        self.hits = 0

    def encode(self, scd: SCDModel, background: torch.Tensor, grid: tuple[int, int, int], text: TextConditioning,
               fps: float = DEFAULT_FPS) -> torch.Tensor:
        """:func:`fast_encode`, or its cached result for the same inputs."""
        if not STEP_CACHE.active(scd.stack.device):
            return fast_encode(scd, background, grid, text, fps)
        inputs = [background, text.embeds, text.mask, text.audio_embeds]
        blocks = list(scd.stack.model.transformer_blocks)[:scd.split_layer]
        key = (id(scd.stack.model), tuple(grid), scd.split_layer, scd.options.causal, scd.options.shift,
               float(fps), tensor_layout(inputs))
        signature = (module_signature([scd.stack.model]), backend_signature(), len(blocks))
        e = self.entry
        if e is not None and e.key == key and e.signature == signature and _equal(e.inputs, inputs):
            self.hits += 1
            return e.context
        self.entry = None
        context = fast_encode(scd, background, grid, text, fps)
        self.entry = _Encoded(key, signature, [t if t is None else t.detach().clone() for t in inputs], context)
        return context

    def clear(self) -> None:
        """Drop the cached encoder output."""
        self.entry = None


ENCODER_CACHE = EncoderCache()


def clear_caches() -> None:
    """Free every cross-edit cache (prepared steps, CUDA graphs, the encoder output): e.g. before unloading."""
    STEP_CACHE.clear()
    ENCODER_CACHE.clear()
