"""Edit modes for the pretrained LTX-2 without an SCD LoRA: `training_free` (mask-local) and `full` (the reference).

LTX-2 is trained to mix clean conditioning tokens (timestep 0) with noisy ones in one sequence, so the official
weights can fill a masked region given the clean rest of the clip:

- ``training_free``: every block runs on the masked (+dilated) tokens only. The background tokens enter as clean
  tokens at σ=0 with their own positions; they attend to themselves only (one-way), so their per-block keys/values
  do not depend on the step and are computed once per edit. A step costs in proportion to the mask.
- ``full``: the whole clip through every block every step, the mask as per-token timesteps (σ inside, 0 outside) —
  what native ComfyUI inpainting with a noise mask costs; the quality reference and the speed baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..conditioning.text import TextConditioning
from .fast_decode import STEPS_HINT, PrefixStep, live_bias, prefix_pass, tensor_layout, video_block
from .kv_cache import OneWayPrefix, installed
from .prefix_attention import BlockKV, PrefixBuffer, SplitRope, split_rope
from .scd import DEFAULT_FPS, MASK_BIAS, LTX2Stack, TextContext

Rope = tuple[torch.Tensor, torch.Tensor]


@dataclass
class MaskLocalPlan:
    """Per-edit inputs of a mask-local pass: which tokens are edited, the clean background around them."""

    index: torch.Tensor
    background_index: torch.Tensor
    background: torch.Tensor
    rope: Rope
    background_rope: Rope | None
    text: TextContext
    background_text: TextContext


def _text_with_keep(stack: LTX2Stack, text: TextConditioning, keep: torch.Tensor | None) -> TextContext:
    """Projected prompt context; `keep` [B,n,T] limits which prompt tokens each query token may attend to."""
    ctx = stack.text(text)
    if keep is not None:
        ctx.video_bias = torch.where(keep.to(stack.device), 0.0, MASK_BIAS).to(stack.dtype)
    return ctx


class MaskLocalModel:
    """The pretrained LTX-2 run on the edit tokens only, the clean background as a one-way prefix (`training_free`).

    ``decode`` is the reference (diffusers blocks, the background recomputed each call); :class:`FastMaskLocal`
    caches the background keys/values once per edit and gives the same velocities.
    """

    def __init__(self, stack: LTX2Stack, fps: float = DEFAULT_FPS):
        self.stack = stack
        self.fps = fps
        self.decoder_calls = 0

    def plan(self, index: torch.Tensor, tokens: torch.Tensor, grid: tuple[int, int, int], text: TextConditioning,
             *, background_index: torch.Tensor, text_keep: torch.Tensor | None = None,
             background_keep: torch.Tensor | None = None) -> MaskLocalPlan:
        """Inputs for editing `index` (flat f*h*w order) of the clean latent tokens [1,N,C], the tokens of
        `background_index` serving as clean context; `text_keep`/`background_keep` are per-token prompt masks."""
        s = self.stack
        batch = text.embeds.shape[0]
        coords = s.video_coords(grid, batch, self.fps)
        clean = tokens[:, background_index.to(tokens.device)].to(s.device, s.dtype)
        background = s.model.proj_in(clean).expand(batch, -1, -1)
        background_rope = s.rope(coords[:, :, background_index.to(s.device)]) if background_index.numel() else None
        return MaskLocalPlan(index, background_index, background, s.rope(coords[:, :, index.to(s.device)]),
                             background_rope,
                             _text_with_keep(s, text, text_keep), _text_with_keep(s, text, background_keep))

    def decode(self, plan: MaskLocalPlan, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Velocity [B,n,C] of the edit tokens x [B,n,C] at σ [B]: the background alone at σ=0 through every block
        (its self-attention keys/values kept), then the edit tokens attending to [background; own]."""
        s = self.stack
        sigma = sigma.to(s.device, torch.float32)
        attend = None
        if plan.background.shape[1]:
            prefix = OneWayPrefix(range(s.num_layers),
                                  lambda index, cache: installed([s.model.transformer_blocks[index]], [cache]))
            s.run_blocks(plan.background, 0, s.num_layers, plan.background_text, s.clean_time(sigma.shape[0]),
                         plan.background_rope, None, None, prefix.around("record"))
            attend = prefix.around("prepend")
        time = s.time(sigma, sigma)
        hidden = s.model.proj_in(x.to(s.device, s.dtype))
        hidden = s.run_blocks(hidden, 0, s.num_layers, plan.text, time, plan.rope, None, None, attend)
        return s.head(hidden, time.embedded)




class FastMaskLocal(PrefixStep):
    """``MaskLocalModel.decode`` with per-edit caches: the background's per-block self-attention keys/values and
    the prompt keys/values are computed once; each step runs every block on the edit tokens only."""

    def __init__(self, model: MaskLocalModel, plan: MaskLocalPlan, *, block_fn=video_block, defer: bool = False):
        """Precompute the per-edit caches (``defer``: leave them to :meth:`build`, for a :class:`StepCache`)."""
        s = model.stack
        self.reusable = True
        self.model, self.stack, self.plan, self.block_fn = model, s, plan, block_fn
        self.blocks = list(s.model.transformer_blocks)
        self.rope_type = self.blocks[0].attn1.rope_type
        self.batch = batch = plan.background.shape[0]
        self.n = plan.index.numel()
        video = plan.text.video
        self.text_video = video.expand(batch, -1, -1).contiguous() if video.shape[0] != batch else video
        self.text_bias = live_bias(plan.text.video_bias)
        self.background_bias = live_bias(plan.background_text.video_bias)
        self.sigma_text = s.prompt_depends_on_sigma
        self.rope = split_rope(plan.rope, self.rope_type)
        self.text_kv: list[BlockKV] | None = None
        self.prefix_kv: list[PrefixBuffer | None] = [None] * len(self.blocks)
        self.built = False
        if not defer:
            self.build()

    def modules(self) -> list[torch.nn.Module]:
        """The modules whose weights the step reads."""
        return [self.stack.model]

    def inputs(self) -> list[torch.Tensor | None]:
        """Everything besides the weights that the per-edit caches are computed from."""
        p = self.plan
        background_rope = list(p.background_rope) if p.background_rope is not None else [None, None]
        return [p.background, *background_rope, *p.rope, p.text.video, p.text.video_bias,
                p.background_text.video_bias]

    def layout(self) -> tuple:
        """What a captured step depends on beyond its inputs' values."""
        return ("training_free", self.n, self.batch, self.sigma_text, self.rope_type, id(self.block_fn),
                tensor_layout([self.text_bias, self.background_bias]))

    def build(self, prefix_into: list[PrefixBuffer | None] | None = None) -> FastMaskLocal:
        """Compute the prompt keys/values and the background pass (its keys/values written into `prefix_into`
        when given)."""
        self.cache_text()
        if self.plan.background.shape[1]:
            clean = self.stack.clean_time(self.batch)
            self.prefix_kv = self._background_pass(clean.temb[:, :1], self.text_at(clean.temb_prompt), prefix_into)
        self.built = True
        return self

    def refill_from(self, other: FastMaskLocal) -> None:
        """:meth:`PrefixStep.refill_from`, and take `other`'s plan and background prompt bias, which
        :meth:`refresh` reads outside the captured step."""
        super().refill_from(other)
        self.plan, self.background_bias = other.plan, other.background_bias
        self.__dict__.pop("_joint_inputs", None)

    def _background_pass(self, temb: torch.Tensor, text: list[BlockKV],
                         into: list[PrefixBuffer | None] | None = None) -> list[PrefixBuffer]:
        """The clean background alone through every block at σ=0; each block's self-attention keys/values go
        straight into its prefix buffer (`into`'s when given), so only one block's own copy exists at a time."""
        rope = split_rope(self.plan.background_rope, self.rope_type)
        return prefix_pass(self.block_fn, self.blocks, self.plan.background, temb, rope, self.rope_type, text,
                           self.background_bias, self.n, None, into)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Velocity [B,n,C] of the edit tokens x [B,n,C] at σ [B]."""
        s = self.stack
        _, time = self.begin(sigma)
        text = self.text_at(time.temb_prompt)
        hidden = s.model.proj_in(x.to(s.device, s.dtype))
        for i, block in enumerate(self.blocks):
            hidden, _ = self.block_fn(block, hidden, time.temb, self.rope, self.rope_type, text[i],
                                      self.text_bias, prefix=self.prefix_kv[i], repeats=len(self.blocks) * STEPS_HINT)
        return s.head(hidden, time.embedded)

    def refresh(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The step as ``full`` runs it — background and edit tokens together, attending both ways (the background
        at σ=0) — returning the edit tokens' velocity and rewriting each block's prefix keys/values with the
        background's from this pass, so the one-way steps after it see a background that has seen the edit."""
        if not self.built:
            self.build()
        p = self.plan.background.shape[1]
        if p == 0:
            return self(x, sigma)
        self.dirty = True
        s, batch = self.stack, x.shape[0]
        sigma = sigma.to(s.device, torch.float32)
        sigma_tokens = torch.cat([sigma.new_zeros(batch, p), sigma[:, None].expand(batch, self.n)], dim=1)
        time = s.time(sigma_tokens, sigma)
        text = self.text_at(time.temb_prompt)
        rope, bias = self._joint()
        hidden = torch.cat([self.plan.background, s.model.proj_in(x.to(s.device, s.dtype))], dim=1)
        for i, block in enumerate(self.blocks):
            hidden, own = video_block(block, hidden, time.temb, rope, self.rope_type, text[i], bias, keep_kv=True)
            self.prefix_kv[i].k[:, :, :p].copy_(own.k[:, :, :p])
            self.prefix_kv[i].v[:, :, :p].copy_(own.v[:, :, :p])
            del own
        return s.head(hidden[:, p:], time.embedded[:, p:])

    def _joint(self) -> tuple[Rope | SplitRope, torch.Tensor | None]:
        """Rotary tables and prompt bias of [background; edit tokens], for :meth:`refresh` (once per edit)."""
        if not hasattr(self, "_joint_inputs"):
            background = split_rope(self.plan.background_rope, self.rope_type)
            parts = [torch.cat(pair, dim=1) for pair in zip(background, self.rope)]
            rope = SplitRope(*parts) if isinstance(self.rope, SplitRope) else tuple(parts)
            biases = [self.background_bias, self.text_bias]
            bias = None
            if any(b is not None for b in biases):
                rows = [self.plan.background.shape[1], self.n]
                like = next(b for b in biases if b is not None)
                bias = torch.cat([(like.new_zeros(()) if b is None else b).expand(self.batch, r, like.shape[-1])
                                  for b, r in zip(biases, rows)], dim=1)
            self._joint_inputs = (rope, bias)
        return self._joint_inputs


@dataclass
class FullPlan:
    """Per-edit inputs of a full pass: every token of the clip, which of them are edited, the prompt context."""

    index: torch.Tensor
    tokens: torch.Tensor
    rope: Rope
    text: TextContext


class FullModel:
    """The pretrained LTX-2 on the whole clip every step, the mask as per-token timesteps (`full`, the reference)."""

    def __init__(self, stack: LTX2Stack, fps: float = DEFAULT_FPS):
        self.stack = stack
        self.fps = fps
        self.decoder_calls = 0

    def plan(self, index: torch.Tensor, tokens: torch.Tensor, grid: tuple[int, int, int], text: TextConditioning,
             *, text_keep: torch.Tensor | None = None) -> FullPlan:
        """Inputs for editing `index` of the latent tokens [1,N,C] (the others stay clean at σ=0); `text_keep`
        [B,N,T] is the per-token prompt mask of every token."""
        s = self.stack
        batch = text.embeds.shape[0]
        return FullPlan(index, tokens.to(s.device), s.rope(s.video_coords(grid, batch, self.fps)),
                        _text_with_keep(s, text, text_keep))

    def decode(self, plan: FullPlan, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Velocity [B,n,C] of the edit tokens x [B,n,C] at σ [B], the rest of the clip clean at σ=0."""
        s = self.stack
        batch = x.shape[0]
        sigma = sigma.to(s.device, torch.float32)
        index = plan.index.to(s.device)
        tokens = plan.tokens.expand(batch, -1, -1).clone()
        tokens[:, index] = x.to(tokens)
        sigma_tokens = torch.zeros(batch, tokens.shape[1], device=s.device)
        sigma_tokens[:, index] = sigma[:, None]
        time = s.time(sigma_tokens, sigma)
        hidden = s.run_blocks(s.model.proj_in(tokens.to(s.dtype)), 0, s.num_layers, plan.text, time, plan.rope)
        return s.head(hidden[:, index], time.embedded[:, index])
