"""Separable Causal Diffusion (SCD) over diffusers' LTX-2 transformer.

The encoder (blocks ``[0, k)``) runs once per edit over the clean background latents at σ=0 with a
frame-block-causal mask; its output, shifted by one latent frame, is prefixed to the noisy tokens (token concat,
duplicated position embeddings) for the decoder (blocks ``[k, N)``), which runs every step on the masked tokens only.
By default the prefix is *one-way*: the noisy tokens attend to it, it never attends to them, so its per-block
keys/values do not depend on the step and are computed once per edit (the same as an encoder K/V cache; half the
decoder work at a full mask). ``prefix="bidirectional"`` is the SCD paper's plain token concat.
``LTX2Stack`` runs the diffusers model piecewise; with causal mask, shift and concat off the split equals the
model's own forward exactly (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace

import torch
from diffusers import LTX2VideoTransformer3DModel

from ..conditioning.text import TextConditioning
from ..loading.scd_metadata import PREFIX_MODES
from .adapters import GlobalContextEmbedder, LocalContextModule, local_context_tokens, token_coords
from .context import DEFAULT_FPS
from .kv_cache import CachedSelfAttention, OneWayPrefix, OneWayPrefixAttention, cached_self_attention, installed

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

    def key_bias(self) -> torch.Tensor | None:
        """Per-sample key bias [B,1,T] (any query may attend to a key any query of its sample may attend to)."""
        if self.video_bias is None:
            return None
        return self.video_bias.amax(dim=1, keepdim=True)


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

    def video_coords(self, grid: tuple[int, int, int], batch: int = 1, fps: float = DEFAULT_FPS) -> torch.Tensor:
        """Patch-boundary coordinates [B,3,N,2] of every token of a latent grid (frames, height, width) of a clip at
        `fps` (diffusers' own, as its forward computes them from ``fps``: the time axis is in seconds)."""
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
        elif cond.audio_embeds is not None:
            audio = cond.audio_embeds.to(self.device, self.dtype)
        bias = None
        if cond.mask is not None:
            bias = ((1 - cond.mask.to(self.device, self.dtype)) * MASK_BIAS).unsqueeze(1)
        return TextContext(video, audio, bias, bias)

    def time(self, sigma_tokens: torch.Tensor, sigma: torch.Tensor) -> TimeContext:
        """Timestep modulation from σ per video token [B,n] (or [B]) and σ per sample [B] (audio, prompt AdaLN).

        Every AdaLN gets σ·timestep_scale_multiplier (1000), what diffusers' forward receives from LTX2Pipeline
        (``timestep = sigma = σ·1000``) and what ltx-core feeds its AdaLNs, LTX-2.3's prompt AdaLN included.
        """
        m, c = self.model, self.config
        batch = sigma.shape[0]
        scale = c.timestep_scale_multiplier
        timestep = (sigma * scale).flatten()
        temb, embedded = m.time_embed((sigma_tokens * scale).flatten(), batch_size=batch, hidden_dtype=self.dtype)
        temb = temb.view(batch, -1, temb.shape[-1])
        embedded = embedded.view(batch, -1, embedded.shape[-1])
        temb_audio, _ = m.audio_time_embed(timestep, batch_size=batch, hidden_dtype=self.dtype)
        temb_audio = temb_audio.view(batch, -1, temb_audio.shape[-1])
        temb_prompt = temb_prompt_audio = None
        if self.prompt_depends_on_sigma:
            temb_prompt, _ = m.prompt_adaln(timestep, batch_size=batch, hidden_dtype=self.dtype)
            temb_prompt_audio, _ = m.audio_prompt_adaln(timestep, batch_size=batch, hidden_dtype=self.dtype)
            temb_prompt = temb_prompt.view(batch, -1, temb_prompt.shape[-1])
            temb_prompt_audio = temb_prompt_audio.view(batch, -1, temb_prompt_audio.shape[-1])
        return TimeContext(temb, embedded, temb_audio, temb_prompt, temb_prompt_audio)

    def clean_time(self, batch: int) -> TimeContext:
        """Modulation of clean tokens at σ=0 (the encoder, a one-way prefix) for a batch of `batch`."""
        zero = torch.zeros(batch, device=self.device, dtype=torch.float32)
        return self.time(zero, zero)

    @property
    def prompt_depends_on_sigma(self) -> bool:
        """LTX-2.3's prompt AdaLN modulates the prompt by σ, so its keys/values change every step (LTX-2.5's do not)."""
        return bool(self.model.prompt_modulation and self.config.use_prompt_adaln_single)

    def audio_stream(self, batch: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The one-token silent audio stream and its rotary embedding."""
        m = self.model
        audio = torch.zeros(batch, 1, self.config.audio_in_channels, device=self.device, dtype=self.dtype)
        coords = m.audio_rope.prepare_audio_coords(batch, 1, self.device)
        return m.audio_proj_in(audio), m.audio_rope(coords, device=self.device)

    def run_blocks(self, hidden: torch.Tensor, start: int, end: int, text: TextContext, time: TimeContext,
                   rotary: tuple[torch.Tensor, torch.Tensor], self_attention_bias: torch.Tensor | None = None,
                   after_block: BlockHook | None = None,
                   around_block: Callable[[int], AbstractContextManager] | None = None) -> torch.Tensor:
        """Run blocks ``[start, end)`` on video hidden states; `after_block(i, h)` may add residuals.

        `around_block(i)` is a context entered around block i's call, also when gradient checkpointing recomputes
        it in the backward pass (e.g. forward hooks that must be present both times).
        """
        batch = hidden.shape[0]
        audio, audio_rotary = self.audio_stream(batch)
        text = text.repeat(batch)
        for index in range(start, end):
            block = self.model.transformer_blocks[index]
            context = (lambda index=index: around_block(index)) if around_block is not None else nullcontext
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
                hidden, audio = torch.utils.checkpoint.checkpoint(_call_block, block, args, context,
                                                                  use_reentrant=False)
            else:
                hidden, audio = _call_block(block, args, context)
            if after_block is not None:
                hidden = after_block(index, hidden)
        return hidden

    def head(self, hidden: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """Output modulation, norm and projection back to latent channels."""
        m = self.model
        values = m.scale_shift_table[None, None].to(hidden.dtype) + embedded[:, :, None]
        shift, scale = values[:, :, 0], values[:, :, 1]
        return m.proj_out(m.norm_out(hidden) * (1 + scale) + shift)


def _call_block(block: torch.nn.Module, args: dict, context: Callable[[], AbstractContextManager]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    with context():
        return block(**args)


def frame_causal_bias(grid: tuple[int, int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Additive [1,N,N] mask: a token of latent frame i attends to frames ≤ i (bidirectional within a frame)."""
    f, h, w = grid
    frame = torch.arange(f, device=device).repeat_interleave(h * w)
    allowed = frame[None, :] <= frame[:, None]
    return torch.where(allowed, 0.0, MASK_BIAS).to(dtype)[None]


def per_prompt(tokens: torch.Tensor, text: TextConditioning) -> torch.Tensor:
    """Tokens [1,N,C] repeated for every prompt of `text` (CFG's conditional and unconditional rows), so the encoder
    runs each prompt: the negative branch is unconditional all the way through."""
    batch = text.embeds.shape[0]
    return tokens if tokens.shape[0] == batch else tokens.expand(batch, -1, -1)


def shift_one_frame(context: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Shift per-token encoder features by one latent frame: frame i gets frame i-1's features, frame 0 zeros."""
    f, h, w = grid
    b, n, d = context.shape
    per_frame = context.view(b, f, h * w, d)
    shifted = torch.cat([torch.zeros_like(per_frame[:, :1]), per_frame[:, :-1]], dim=1)
    return shifted.reshape(b, n, d)


def one_way_prefix_bias(n: int, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Additive [B,2n,2n] self-attention mask of the token-concat decoder: prefix rows never see the noisy columns."""
    bias = torch.zeros(2 * n, 2 * n, device=device, dtype=dtype)
    bias[:n, n:] = MASK_BIAS
    return bias.expand(batch, -1, -1)


@dataclass
class SCDOptions:
    """Switches of the SCD split (causal, shift, concat all off reproduces the plain model).

    ``shift`` is the SCD paper's next-frame shift (frame i's edit tokens see frame i−1's encoding, frame 0 zeros):
    right for next-frame-prediction weights, not for editing, where every frame has its own background — so off by
    default. ``causal`` is the frame-causal encoder (needed for window-by-window encoding); off = the base model's
    bidirectional attention. Trained weights record both in their metadata and the loader follows them.
    """

    split_layer: int
    causal: bool = True
    shift: bool = False
    concat: bool = True
    prefix: str = "one_way"

    def __post_init__(self) -> None:
        if self.prefix not in PREFIX_MODES:
            raise ValueError(f"SCD prefix mode must be one of {PREFIX_MODES}; got {self.prefix!r}")


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
        self.local: LocalContextModule | None = None
        self.global_context: GlobalContextEmbedder | None = None

    def variant(self, **changes: object) -> SCDModel:
        """A new SCDModel over the same transformer, adapters and hooks with some options changed (e.g. prefix)."""
        other = SCDModel(self.stack.model, replace(self.options, **changes))
        other.decoder_block_hooks = list(self.decoder_block_hooks)
        other.local, other.global_context = self.local, self.global_context
        return other

    @property
    def num_decoder_blocks(self) -> int:
        return self.stack.num_layers - self.split_layer

    def attach(self, local: LocalContextModule | None = None, global_context: GlobalContextEmbedder | None = None
               ) -> None:
        """Attach EditCtrl adapters after checking they fit this model (width, text width, target blocks)."""
        inner = self.stack.model.proj_in.out_features
        channels = self.stack.config.in_channels
        for name, module in (("local context module", local), ("global context embedder", global_context)):
            if module is None:
                continue
            cfg = module.config
            problems = []
            if cfg.model_dim != inner:
                problems.append(f"model_dim {cfg.model_dim} != transformer width {inner}")
            if cfg.in_channels != channels + 1:
                problems.append(f"in_channels {cfg.in_channels} != latent channels + mask ({channels + 1})")
            if getattr(cfg, "text_dim", inner) != inner:
                problems.append(f"text_dim {cfg.text_dim} != projected text width {inner}")
            bad = [t for t in cfg.target_blocks if t >= self.num_decoder_blocks]
            if bad:
                problems.append(f"target blocks {bad} beyond the {self.num_decoder_blocks} decoder blocks")
            if problems:
                raise ValueError(f"{name} does not fit this model ({'; '.join(problems)}); train or load one for "
                                 f"this base model and split layer {self.split_layer}")
        if local is not None:
            self.local = local.to(self.stack.device)
        if global_context is not None:
            self.global_context = global_context.to(self.stack.device)

    @property
    def transformer(self) -> LTX2VideoTransformer3DModel:
        return self.stack.model

    @property
    def split_layer(self) -> int:
        return self.options.split_layer

    def encode(self, background: torch.Tensor, grid: tuple[int, int, int], text: TextConditioning,
               fps: float = DEFAULT_FPS) -> torch.Tensor:
        """Encoder pass over clean background tokens [B,N,C] at σ=0 for every prompt of `text`; returns (shifted)
        context features [B,N,D]."""
        self.encoder_calls += 1
        s = self.stack
        background = per_prompt(background, text)
        batch = background.shape[0]
        time = s.clean_time(batch)
        rotary = s.rope(s.video_coords(grid, batch, fps))
        bias = frame_causal_bias(grid, s.device, s.dtype) if self.options.causal else None
        if bias is not None:
            bias = bias.expand(batch, -1, -1)
        hidden = s.model.proj_in(background.to(s.device, s.dtype))
        hidden = s.run_blocks(hidden, 0, self.split_layer, s.text(text), time, rotary, bias)
        return shift_one_frame(hidden, grid) if self.options.shift else hidden

    def encode_windowed(self, background: torch.Tensor, grid: tuple[int, int, int], text: TextConditioning,
                        window_frames: int, fps: float = DEFAULT_FPS) -> torch.Tensor:
        """Causal encoder pass window by window (latent frames), carrying each block's K/V cache across windows.

        Equals `encode` (single pass) up to float summation order, with activations of one window at a time.
        """
        if window_frames < 1:
            raise ValueError(f"window must be at least one latent frame; got {window_frames}")
        if not self.options.causal:
            raise ValueError("windowed encoding needs the frame-causal encoder (causal=True)")
        self.encoder_calls += 1
        s = self.stack
        f, h, w = grid
        per_frame = h * w
        background = per_prompt(background, text)
        batch = background.shape[0]
        time = s.clean_time(batch)
        coords = s.video_coords(grid, batch, fps)
        frame_of = torch.arange(f, device=s.device).repeat_interleave(per_frame)
        text_ctx = s.text(text)
        outputs = []
        blocks = [s.model.transformer_blocks[i] for i in range(self.split_layer)]
        with cached_self_attention(blocks):
            for start in range(0, f, window_frames):
                stop = min(f, start + window_frames)
                tokens = slice(start * per_frame, stop * per_frame)
                allowed = frame_of[None, : stop * per_frame] <= frame_of[tokens, None]
                bias = torch.where(allowed, 0.0, MASK_BIAS).to(s.dtype)[None].expand(batch, -1, -1)
                hidden = s.model.proj_in(background[:, tokens].to(s.device, s.dtype))
                rotary = s.rope(coords[:, :, tokens])
                outputs.append(s.run_blocks(hidden, 0, self.split_layer, text_ctx, time, rotary, bias))
        hidden = torch.cat(outputs, dim=1)
        return shift_one_frame(hidden, grid) if self.options.shift else hidden

    def plan(self, index: torch.Tensor, context: torch.Tensor, grid: tuple[int, int, int],
             text: TextConditioning, *, background: torch.Tensor | None = None,
             edit_mask: torch.Tensor | None = None, text_keep: torch.Tensor | None = None,
             fps: float = DEFAULT_FPS, global_input: torch.Tensor | None = None) -> DecodePlan:
        """Precompute the decoder's per-edit inputs for the selected token indices (flattened f*h*w order).

        `background` [1,C,f,h,w] (edit region blanked) and `edit_mask` [f,h,w] feed the local adapter,
        `global_input` [1,C+1,f',h',w'] (:func:`editctrl_core.edit.context.global_input`) the global one;
        `text_keep` [B,n,T] restricts which prompt tokens each selected token may attend to (multi-region); `fps` is
        the clip's frame rate (RoPE's time axis).
        """
        s = self.stack
        batch = text.embeds.shape[0]
        coords = s.video_coords(grid, batch, fps)[:, :, index.to(s.device)]
        prefix = context[:, index.to(context.device)].to(s.device, s.dtype)
        if prefix.shape[0] != batch:
            prefix = prefix.expand(batch, -1, -1)
        if self.options.concat:
            rotary = s.rope(torch.cat([coords, coords], dim=2))
            prefix_time = s.clean_time(batch).temb.expand(-1, index.numel(), -1)
        else:
            rotary = s.rope(coords)
            prefix_time = torch.empty(0, device=s.device)
        text_ctx = s.text(text)
        if text_keep is not None:
            keep = text_keep.to(s.device)
            if self.options.concat:
                keep = torch.cat([keep, keep], dim=1)
            text_ctx.video_bias = torch.where(keep, 0.0, MASK_BIAS).to(s.dtype)
        plan = DecodePlan(index, prefix, rotary, text_ctx, prefix_time, coords)
        if self.local is not None and (background is None or edit_mask is None):
            raise ValueError("the local context adapter needs the background latents and the edit mask")
        if self.global_context is not None and global_input is None:
            raise ValueError("the global context adapter needs its low-resolution input (global_input: "
                             "editctrl_core.edit.context.global_input, EditContext.global_input())")
        if self.local is not None:
            plan.extras["local_tokens"] = local_context_tokens(background.to(s.device, torch.float32),
                                                               edit_mask.to(s.device), index)
            plan.extras["local_coords"] = token_coords(index, grid).to(s.device)
        if self.global_context is not None:
            g = self.global_context
            ctx = g(global_input.to(s.device))
            plan.extras["global_kv"] = {t: g.branch_kv(t, ctx) for t in g.target_blocks}
        return plan

    def _local_residuals(self, plan: DecodePlan, x: torch.Tensor, sigma: torch.Tensor, batch: int
                         ) -> dict[int, torch.Tensor]:
        """Local-context hints {decoder block: [B,n,D]} from the context and this step's noisy tokens x at σ."""
        tokens = plan.extras["local_tokens"].expand(batch, -1, -1)
        text = plan.text.repeat(batch)
        return self.local(tokens, x, plan.extras["local_coords"], text.video, sigma, text_mask=text.key_bias())

    @contextmanager
    def _global_branch(self, plan: DecodePlan, index: int) -> Iterator[None]:
        """While entered, block `index`'s text cross-attention output gets the global-context branch added."""
        kv = plan.extras["global_kv"].get(index - self.split_layer)
        if kv is None:
            yield
            return
        g, rel = self.global_context, index - self.split_layer

        def add_branch(module, args, kwargs, output):
            query = args[0] if args else kwargs["hidden_states"]
            k, v = kv
            if k.shape[0] != query.shape[0]:
                k, v = k.expand(query.shape[0], -1, -1, -1), v.expand(query.shape[0], -1, -1, -1)
            return output + g.branch(rel, query, kv=(k, v)).to(output.dtype)

        handle = self.stack.model.transformer_blocks[index].attn2.register_forward_hook(add_branch, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def decode(self, plan: DecodePlan, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """One decoder pass over the selected noisy tokens x [B,n,C] at σ [B]; returns velocity [B,n,C]."""
        if not self.options.concat:
            raise ValueError("decode needs the token-concat decoder (SCDOptions.concat=True); the plain split without "
                             "concat is only a parity check: use forward_split")
        self.decoder_calls += 1
        s = self.stack
        batch, n, _ = x.shape
        sigma = sigma.to(s.device, torch.float32)
        time = s.time(sigma, sigma)
        noisy = s.model.proj_in(x.to(s.device, s.dtype))
        one_way = self.options.prefix == "one_way"
        hooks = list(self.decoder_block_hooks)
        if self.local is not None:
            residuals = self._local_residuals(plan, x, sigma, batch)
            split = self.split_layer

            def add_local(index: int, h: torch.Tensor) -> torch.Tensor:
                r = residuals.get(index - split)
                if r is None:
                    return h
                return torch.cat([h[:, :-n], h[:, -n:] + r.to(h.dtype)], dim=1) if h.shape[1] != n else h + r
            hooks.append(add_local)
        after = None
        if hooks:
            def after(index: int, h: torch.Tensor) -> torch.Tensor:
                for hook in hooks:
                    h = hook(index, h)
                return h
        if one_way and s.prompt_depends_on_sigma:
            return s.head(self._one_way_passes(plan, noisy, time, after), time.embedded)
        hidden = torch.cat([plan.prefix, noisy], dim=1)
        time.temb = torch.cat([plan.prefix_time, time.temb.expand(-1, n, -1)], dim=1)
        around = self._around_blocks(plan, OneWayPrefixAttention(n) if one_way else None)
        hidden = s.run_blocks(hidden, self.split_layer, s.num_layers, plan.text, time, plan.rotary, None, after,
                              around)
        return s.head(hidden[:, n:], time.embedded)

    def _around_blocks(self, plan: DecodePlan, processor: object | None
                       ) -> Callable[[int], AbstractContextManager] | None:
        """Per-block-call context: the global-context branch and/or a self-attention processor, entered again when
        gradient checkpointing recomputes the block in the backward pass (after decode returned)."""
        if processor is None and self.global_context is None:
            return None

        @contextmanager
        def enter(index: int) -> Iterator[None]:
            block = self.stack.model.transformer_blocks[index]
            with (installed([block], [processor]) if processor is not None else nullcontext(),
                  self._global_branch(plan, index) if self.global_context is not None else nullcontext()):
                yield
        return enter

    def _one_way_passes(self, plan: DecodePlan, noisy: torch.Tensor, time: TimeContext,
                        after: BlockHook | None) -> torch.Tensor:
        """The decoder blocks under the one-way prefix for a model whose prompt AdaLN depends on σ (LTX-2.3): the
        prefix alone at its own σ=0, prompt modulation included (its self-attention keys/values kept per block), then
        the noisy tokens attending to [prefix; own]. Modulating the prefix's prompt at σ=0 is what makes it cacheable
        across steps. Each block runs twice per call, which FSDP-sharded blocks do not support."""
        s, n = self.stack, noisy.shape[1]
        prefix_time = s.clean_time(noisy.shape[0])
        rotary = s.rope(plan.coords)
        prefix_text, noisy_text = plan.text, plan.text
        bias = plan.text.video_bias
        if bias is not None and bias.shape[1] == 2 * n:
            prefix_text = replace(plan.text, video_bias=bias[:, :n])
            noisy_text = replace(plan.text, video_bias=bias[:, n:])
        prefix = OneWayPrefix(range(self.split_layer, s.num_layers),
                              lambda index, cache: self._around_blocks(plan, cache)(index))
        s.run_blocks(plan.prefix, self.split_layer, s.num_layers, prefix_text, prefix_time, rotary, None, None,
                     prefix.around("record"))
        return s.run_blocks(noisy, self.split_layer, s.num_layers, noisy_text, time, rotary, None, after,
                            prefix.around("prepend"))

    def forward_split(self, x: torch.Tensor, sigma: torch.Tensor, grid: tuple[int, int, int],
                      text: TextConditioning, fps: float = DEFAULT_FPS) -> torch.Tensor:
        """Plain split forward (encoder then decoder on the same tokens at the same σ): equals the full model."""
        s = self.stack
        batch = x.shape[0]
        sigma = sigma.to(s.device, torch.float32)
        time = s.time(sigma, sigma)
        rotary = s.rope(s.video_coords(grid, batch, fps))
        bias = frame_causal_bias(grid, s.device, s.dtype).expand(batch, -1, -1) if self.options.causal else None
        ctx = s.text(text)
        hidden = s.model.proj_in(x.to(s.device, s.dtype))
        hidden = s.run_blocks(hidden, 0, self.split_layer, ctx, time, rotary, bias)
        hidden = s.run_blocks(hidden, self.split_layer, s.num_layers, ctx, time, rotary, bias)
        return s.head(hidden, time.embedded)


class WindowEncoder:
    """The frame-causal SCD encoder over an edit window by window, carrying the edit: a window's context comes from
    its own background frames after the earlier frames *as edited* (their per-block keys/values kept), so a later
    window is conditioned on what the earlier ones became, causally, and no seam opens at a window boundary.

    Call :meth:`commit` with the edited latents up to a window's first frame, then :meth:`context` for the window;
    one window covering the clip is the one-pass encoder.
    """

    def __init__(self, scd: SCDModel, grid: tuple[int, int, int], text: TextConditioning, fps: float = DEFAULT_FPS):
        if not scd.options.causal:
            raise ValueError("windowed editing needs the frame-causal encoder (causal=True): a bidirectional encoder "
                             "would see frames that are not edited yet")
        s = scd.stack
        self.scd, self.grid, self.text = scd, grid, text
        self.per_frame = grid[1] * grid[2]
        batch = text.embeds.shape[0]
        self.time = s.clean_time(batch)
        self.text_ctx = s.text(text)
        self.coords = s.video_coords(grid, batch, fps)
        self.blocks = [s.model.transformer_blocks[i] for i in range(scd.split_layer)]
        self.caches = [CachedSelfAttention() for _ in self.blocks]
        self.committed = 0
        self.last: torch.Tensor | None = None

    def _run(self, tokens: torch.Tensor, start: int, stop: int, keep: bool) -> torch.Tensor:
        """Encoder output [B,n,D] of frames [start, stop) of `tokens` [1,N,C] after the committed frames (`keep`: add
        these frames' keys/values to the cache)."""
        s, pf = self.scd.stack, self.per_frame
        window = slice(start * pf, stop * pf)
        frame_of = torch.arange(stop, device=s.device).repeat_interleave(pf)
        allowed = frame_of[None, :] <= frame_of[window, None]
        hidden = s.model.proj_in(per_prompt(tokens[:, window], self.text).to(s.device, s.dtype))
        bias = torch.where(allowed, 0.0, MASK_BIAS).to(s.dtype)[None].expand(hidden.shape[0], -1, -1)
        for cache in self.caches:
            cache.keep = keep
        with installed(self.blocks, self.caches):
            return s.run_blocks(hidden, 0, self.scd.split_layer, self.text_ctx, self.time,
                                s.rope(self.coords[:, :, window]), bias)

    def commit(self, edited: torch.Tensor, upto: int) -> None:
        """Cache the keys/values of frames [committed, upto) of the edited latent tokens `edited` [1,N,C]."""
        if upto > self.committed:
            hidden = self._run(edited, self.committed, upto, keep=True)
            self.last = hidden[:, -self.per_frame:]
            self.committed = upto

    def context(self, background: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """(Shifted) context [B,n,D] of frames [start, stop) from the background tokens [1,N,C] (edit region
        blanked), after the edited frames committed before `start`."""
        if start != self.committed:
            raise ValueError(f"commit the edited frames before frame {start} first (committed: {self.committed})")
        self.scd.encoder_calls += 1
        hidden = self._run(background, start, stop, keep=False)
        if not self.scd.options.shift:
            return hidden
        before = self.last if self.last is not None else torch.zeros_like(hidden[:, :self.per_frame])
        return torch.cat([before, hidden[:, :-self.per_frame]], dim=1)
