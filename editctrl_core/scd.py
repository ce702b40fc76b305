"""Separable Causal Diffusion (SCD) over diffusers' LTX-2 transformer.

The encoder (blocks ``[0, k)``) runs once per edit over the clean background latents at σ=0 with a
frame-block-causal mask; its output, shifted by one latent frame, is prefixed to the noisy tokens (token concat,
duplicated position embeddings) for the decoder (blocks ``[k, N)``), which runs every step on the masked tokens only.
``LTX2Stack`` runs the diffusers model piecewise; with causal mask, shift and concat off the split equals the
model's own forward exactly (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers import LTX2VideoTransformer3DModel

from .text import TextConditioning

MASK_BIAS = -10000.0
BlockHook = Callable[[int, torch.Tensor], torch.Tensor]


def default_split_layer(num_layers: int) -> int:
    """Split layer proportional to LTX-2's 32 of 48 (at least one block on each side)."""
    return min(max(1, round(num_layers * 32 / 48)), num_layers - 1)


@dataclass
class TextContext:
    """Prompt embeddings projected to the transformer widths, with additive attention-mask biases."""

    video: torch.Tensor
    audio: torch.Tensor
    video_bias: torch.Tensor | None
    audio_bias: torch.Tensor | None

    def repeat(self, batch: int) -> TextContext:
        """Same context for a larger batch (only valid when the context batch is 1)."""
        if self.video.shape[0] == batch:
            return self
        rep = batch // self.video.shape[0]
        return TextContext(self.video.repeat(rep, 1, 1), self.audio.repeat(rep, 1, 1),
                           None if self.video_bias is None else self.video_bias.repeat(rep, 1, 1),
                           None if self.audio_bias is None else self.audio_bias.repeat(rep, 1, 1))


@dataclass
class TimeContext:
    """Timestep modulation for the video tokens (per token or per sample) and the audio stream."""

    temb: torch.Tensor
    embedded: torch.Tensor
    temb_audio: torch.Tensor
    temb_prompt: torch.Tensor | None
    temb_prompt_audio: torch.Tensor | None


class LTX2Stack:
    """Runs an ``LTX2VideoTransformer3DModel`` piecewise: text/time conditioning, any block range, output head.

    Video-only: the audio stream is one zero token and cross-modal attention is off (``isolate_modalities``),
    so video outputs do not depend on it.
    """

    def __init__(self, model: LTX2VideoTransformer3DModel):
        self.model = model
        self.config = model.config

    @property
    def num_layers(self) -> int:
        return len(self.model.transformer_blocks)

    @property
    def device(self) -> torch.device:
        return self.model.proj_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.proj_in.weight.dtype

    def video_coords(self, grid: tuple[int, int, int], batch: int = 1, fps: float = 24.0) -> torch.Tensor:
        """Patch-boundary coordinates [B,3,N,2] of every token of a latent grid (frames, height, width)."""
        f, h, w = grid
        return self.model.rope.prepare_video_coords(batch, f, h, w, self.device, fps=fps)

    def rope(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary embeddings for an arbitrary token subset given its coordinates [B,3,n,2]."""
        return self.model.rope(coords, device=self.device)

    def text(self, cond: TextConditioning) -> TextContext:
        """Project prompt embeddings (caption projection on LTX-2.0) and build their attention biases."""
        m = self.model
        embeds = cond.embeds.to(self.device, self.dtype)
        video, audio = embeds, embeds
        if self.config.use_prompt_embeddings:
            video = m.caption_projection(embeds)
            audio = m.audio_caption_projection(embeds)
        bias = None
        if cond.mask is not None:
            bias = ((1 - cond.mask.to(self.device, self.dtype)) * MASK_BIAS).unsqueeze(1)
        return TextContext(video, audio, bias, bias)

    def time(self, sigma_tokens: torch.Tensor, sigma: torch.Tensor) -> TimeContext:
        """Timestep modulation from σ per video token [B,n] (or [B]) and σ per sample [B] (audio, prompt AdaLN)."""
        m, c = self.model, self.config
        batch = sigma.shape[0]
        scale = c.timestep_scale_multiplier
        temb, embedded = m.time_embed((sigma_tokens * scale).flatten(), batch_size=batch, hidden_dtype=self.dtype)
        temb = temb.view(batch, -1, temb.shape[-1])
        embedded = embedded.view(batch, -1, embedded.shape[-1])
        temb_audio, _ = m.audio_time_embed((sigma * scale).flatten(), batch_size=batch, hidden_dtype=self.dtype)
        temb_audio = temb_audio.view(batch, -1, temb_audio.shape[-1])
        temb_prompt = temb_prompt_audio = None
        if m.prompt_modulation and c.use_prompt_adaln_single:
            temb_prompt, _ = m.prompt_adaln(sigma.flatten(), batch_size=batch, hidden_dtype=self.dtype)
            temb_prompt_audio, _ = m.audio_prompt_adaln(sigma.flatten(), batch_size=batch, hidden_dtype=self.dtype)
            temb_prompt = temb_prompt.view(batch, -1, temb_prompt.shape[-1])
            temb_prompt_audio = temb_prompt_audio.view(batch, -1, temb_prompt_audio.shape[-1])
        return TimeContext(temb, embedded, temb_audio, temb_prompt, temb_prompt_audio)

    def audio_stream(self, batch: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The one-token silent audio stream and its rotary embedding."""
        m = self.model
        audio = torch.zeros(batch, 1, self.config.audio_in_channels, device=self.device, dtype=self.dtype)
        coords = m.audio_rope.prepare_audio_coords(batch, 1, self.device)
        return m.audio_proj_in(audio), m.audio_rope(coords, device=self.device)

    def run_blocks(self, hidden: torch.Tensor, start: int, end: int, text: TextContext, time: TimeContext,
                   rotary: tuple[torch.Tensor, torch.Tensor], self_attention_bias: torch.Tensor | None = None,
                   after_block: BlockHook | None = None) -> torch.Tensor:
        """Run blocks ``[start, end)`` on video hidden states; `after_block(i, h)` may add residuals."""
        batch = hidden.shape[0]
        audio, audio_rotary = self.audio_stream(batch)
        text = text.repeat(batch)
        for index in range(start, end):
            block = self.model.transformer_blocks[index]
            args = dict(
                hidden_states=hidden, audio_hidden_states=audio, encoder_hidden_states=text.video,
                audio_encoder_hidden_states=text.audio, temb=time.temb, temb_audio=time.temb_audio,
                temb_ca_scale_shift=None, temb_ca_audio_scale_shift=None, temb_ca_gate=None, temb_ca_audio_gate=None,
                temb_prompt=time.temb_prompt, temb_prompt_audio=time.temb_prompt_audio, video_rotary_emb=rotary,
                audio_rotary_emb=audio_rotary, encoder_attention_mask=text.video_bias,
                audio_encoder_attention_mask=text.audio_bias, self_attention_mask=self_attention_bias,
                use_a2v_cross_attention=False, use_v2a_cross_attention=False,
            )
            if torch.is_grad_enabled() and self.model.gradient_checkpointing:
                hidden, audio = torch.utils.checkpoint.checkpoint(_call_block, block, args, use_reentrant=False)
            else:
                hidden, audio = block(**args)
            if after_block is not None:
                hidden = after_block(index, hidden)
        return hidden

    def head(self, hidden: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """Output modulation, norm and projection back to latent channels."""
        m = self.model
        values = m.scale_shift_table[None, None].to(hidden.dtype) + embedded[:, :, None]
        shift, scale = values[:, :, 0], values[:, :, 1]
        return m.proj_out(m.norm_out(hidden) * (1 + scale) + shift)


def _call_block(block: torch.nn.Module, args: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return block(**args)


def frame_causal_bias(grid: tuple[int, int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Additive [1,N,N] mask: a token of latent frame i attends to frames ≤ i (bidirectional within a frame)."""
    f, h, w = grid
    frame = torch.arange(f, device=device).repeat_interleave(h * w)
    allowed = frame[None, :] <= frame[:, None]
    return torch.where(allowed, 0.0, MASK_BIAS).to(dtype)[None]


def shift_one_frame(context: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Shift per-token encoder features by one latent frame: frame i gets frame i-1's features, frame 0 zeros."""
    f, h, w = grid
    b, n, d = context.shape
    per_frame = context.view(b, f, h * w, d)
    shifted = torch.cat([torch.zeros_like(per_frame[:, :1]), per_frame[:, :-1]], dim=1)
    return shifted.reshape(b, n, d)


@dataclass
class SCDOptions:
    """Switches of the SCD split (all on for editing; all off reproduces the plain model)."""

    split_layer: int
    causal: bool = True
    shift: bool = True
    concat: bool = True
    fps: float = 24.0


@dataclass
class DecodePlan:
    """Everything the per-step decoder call reuses: token selection, prefix, rotary and text context."""

    index: torch.Tensor
    prefix: torch.Tensor
    rotary: tuple[torch.Tensor, torch.Tensor]
    text: TextContext
    prefix_time: torch.Tensor
    coords: torch.Tensor
    extras: dict = field(default_factory=dict)


class SCDModel:
    """An LTX-2 transformer split into a once-per-edit causal encoder and a per-step sparse decoder."""

    def __init__(self, transformer: LTX2VideoTransformer3DModel, options: SCDOptions | None = None):
        self.stack = LTX2Stack(transformer)
        n = self.stack.num_layers
        self.options = options or SCDOptions(split_layer=default_split_layer(n))
        if not 0 < self.options.split_layer < n:
            raise ValueError(f"split layer must be in [1, {n - 1}] for a {n}-block model; got "
                             f"{self.options.split_layer}")
        self.encoder_calls = 0
        self.decoder_calls = 0
        self.decoder_block_hooks: list[BlockHook] = []

    @property
    def transformer(self) -> LTX2VideoTransformer3DModel:
        return self.stack.model

    @property
    def split_layer(self) -> int:
        return self.options.split_layer

    def encode(self, background: torch.Tensor, grid: tuple[int, int, int], text: TextConditioning) -> torch.Tensor:
        """Encoder pass over clean background tokens [B,N,C] at σ=0; returns (shifted) context features [B,N,D]."""
        self.encoder_calls += 1
        s = self.stack
        batch = background.shape[0]
        sigma = torch.zeros(batch, device=s.device, dtype=torch.float32)
        time = s.time(sigma, sigma)
        rotary = s.rope(s.video_coords(grid, batch, self.options.fps))
        bias = frame_causal_bias(grid, s.device, s.dtype) if self.options.causal else None
        if bias is not None:
            bias = bias.expand(batch, -1, -1)
        hidden = s.model.proj_in(background.to(s.device, s.dtype))
        hidden = s.run_blocks(hidden, 0, self.split_layer, s.text(text), time, rotary, bias)
        return shift_one_frame(hidden, grid) if self.options.shift else hidden

    def plan(self, index: torch.Tensor, context: torch.Tensor, grid: tuple[int, int, int],
             text: TextConditioning) -> DecodePlan:
        """Precompute the decoder's per-edit inputs for the selected token indices (flattened f*h*w order)."""
        s = self.stack
        batch = text.embeds.shape[0]
        coords = s.video_coords(grid, batch, self.options.fps)[:, :, index.to(s.device)]
        prefix = context[:, index.to(context.device)].to(s.device, s.dtype)
        if prefix.shape[0] != batch:
            prefix = prefix.expand(batch, -1, -1)
        if self.options.concat:
            rotary = s.rope(torch.cat([coords, coords], dim=2))
            zero = torch.zeros(batch, device=s.device)
            prefix_time = s.time(zero, zero).temb.expand(-1, index.numel(), -1)
        else:
            rotary = s.rope(coords)
            prefix_time = torch.empty(0, device=s.device)
        return DecodePlan(index, prefix, rotary, s.text(text), prefix_time, coords)

    def decode(self, plan: DecodePlan, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """One decoder pass over the selected noisy tokens x [B,n,C] at σ [B]; returns velocity [B,n,C]."""
        self.decoder_calls += 1
        s = self.stack
        batch, n, _ = x.shape
        sigma = sigma.to(s.device, torch.float32)
        time = s.time(sigma, sigma)
        noisy = s.model.proj_in(x.to(s.device, s.dtype))
        if self.options.concat:
            hidden = torch.cat([plan.prefix, noisy], dim=1)
            time.temb = torch.cat([plan.prefix_time, time.temb.expand(-1, n, -1)], dim=1)
        else:
            hidden = plan.prefix
        hooks = self.decoder_block_hooks
        after = None
        if hooks:
            def after(index: int, h: torch.Tensor) -> torch.Tensor:
                for hook in hooks:
                    h = hook(index, h)
                return h
        hidden = s.run_blocks(hidden, self.split_layer, s.num_layers, plan.text, time, plan.rotary, None, after)
        if self.options.concat:
            hidden = hidden[:, n:]
        return s.head(hidden, time.embedded)

    def forward_split(self, x: torch.Tensor, sigma: torch.Tensor, grid: tuple[int, int, int],
                      text: TextConditioning) -> torch.Tensor:
        """Plain split forward (encoder then decoder on the same tokens at the same σ): equals the full model."""
        s = self.stack
        batch = x.shape[0]
        sigma = sigma.to(s.device, torch.float32)
        time = s.time(sigma, sigma)
        rotary = s.rope(s.video_coords(grid, batch, self.options.fps))
        bias = frame_causal_bias(grid, s.device, s.dtype).expand(batch, -1, -1) if self.options.causal else None
        ctx = s.text(text)
        hidden = s.model.proj_in(x.to(s.device, s.dtype))
        hidden = s.run_blocks(hidden, 0, self.split_layer, ctx, time, rotary, bias)
        hidden = s.run_blocks(hidden, self.split_layer, s.num_layers, ctx, time, rotary, bias)
        return s.head(hidden, time.embedded)
