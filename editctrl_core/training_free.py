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

from .fast_decode import BlockKV, PrefixBuffer, block_text_kv, video_block
from .kv_cache import PrefixAttention
from .scd import MASK_BIAS, LTX2Stack, TextContext
from .text import TextConditioning

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

    def __init__(self, stack: LTX2Stack, fps: float = 24.0):
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
        zero = torch.zeros_like(sigma)
        caches = {i: PrefixAttention() for i in range(s.num_layers)}

        def around(mode: str):
            def enter(index: int):
                caches[index].mode = mode
                return _SwapProcessor(s.model.transformer_blocks[index].attn1, caches[index])
            return enter

        attend = None
        if plan.background.shape[1]:
            s.run_blocks(plan.background, 0, s.num_layers, plan.background_text, s.time(zero, zero),
                         plan.background_rope, None, None, around("record"))
            attend = around("prepend")
        time = s.time(sigma, sigma)
        hidden = s.model.proj_in(x.to(s.device, s.dtype))
        hidden = s.run_blocks(hidden, 0, s.num_layers, plan.text, time, plan.rope, None, None, attend)
        return s.head(hidden, time.embedded)


class _SwapProcessor:
    """Context manager that swaps an attention module's processor for the duration of one block call."""

    def __init__(self, attn: torch.nn.Module, processor: object):
        self.attn, self.processor = attn, processor

    def __enter__(self) -> None:
        self.original = self.attn.processor
        self.attn.set_processor(self.processor)

    def __exit__(self, *_: object) -> None:
        self.attn.set_processor(self.original)


class FastMaskLocal:
    """``MaskLocalModel.decode`` with per-edit caches: the background's per-block self-attention keys/values and
    the prompt keys/values are computed once; each step runs every block on the edit tokens only."""

    def __init__(self, model: MaskLocalModel, plan: MaskLocalPlan, *, block_fn=video_block):
        s = model.stack
        self.model, self.stack, self.plan, self.block_fn = model, s, plan, block_fn
        self.blocks = list(s.model.transformer_blocks)
        self.rope_type = self.blocks[0].attn1.rope_type
        batch = plan.background.shape[0]
        self.n = plan.index.numel()
        self.text_video = plan.text.video.expand(batch, -1, -1) if plan.text.video.shape[0] != batch else plan.text.video
        self.text_bias = plan.text.video_bias
        self.sigma_text = s.prompt_depends_on_sigma
        self.text_kv = None if self.sigma_text else [block_text_kv(b, self.text_video, None) for b in self.blocks]
        zero = torch.zeros(batch, device=s.device)
        background_time = s.time(zero, zero)
        background_text = self.text_kv
        if background_text is None:
            background_text = [block_text_kv(b, self.text_video, background_time.temb_prompt) for b in self.blocks]
        self.prefix: list[BlockKV | None] = [None] * len(self.blocks)
        if plan.background.shape[1]:
            self.prefix = [PrefixBuffer.around(kv, self.n) for kv in
                           self._background_pass(background_time.temb[:, :1], background_text)]

    def _background_pass(self, temb: torch.Tensor, text: list[BlockKV]) -> list[BlockKV]:
        """The clean background alone through every block at σ=0, keeping each block's self-attention keys/values."""
        hidden, cache = self.plan.background, []
        for i, block in enumerate(self.blocks):
            hidden, own = self.block_fn(block, hidden, temb, self.plan.background_rope, self.rope_type, text[i],
                                        self.plan.background_text.video_bias, keep_kv=True)
            cache.append(own)
        return cache

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Velocity [B,n,C] of the edit tokens x [B,n,C] at σ [B]."""
        s = self.stack
        sigma = sigma.to(s.device, torch.float32)
        time = s.time(sigma, sigma)
        text = self.text_kv
        if text is None:
            text = [block_text_kv(b, self.text_video, time.temb_prompt) for b in self.blocks]
        hidden = s.model.proj_in(x.to(s.device, s.dtype))
        for i, block in enumerate(self.blocks):
            hidden, _ = self.block_fn(block, hidden, time.temb, self.plan.rope, self.rope_type, text[i],
                                      self.text_bias, prefix=self.prefix[i])
        return s.head(hidden, time.embedded)


@dataclass
class FullPlan:
    """Per-edit inputs of a full pass: every token of the clip, which of them are edited, the prompt context."""

    index: torch.Tensor
    tokens: torch.Tensor
    rope: Rope
    text: TextContext


class FullModel:
    """The pretrained LTX-2 on the whole clip every step, the mask as per-token timesteps (`full`, the reference)."""

    def __init__(self, stack: LTX2Stack, fps: float = 24.0):
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
