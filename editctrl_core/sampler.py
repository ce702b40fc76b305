"""Sparse flow-matching Euler edit sampler: the SCD decoder runs only on the masked (+dilated) tokens.

Outside the dilated token mask latents are never touched and stay the clean source; inside, the edit starts
from noise (or from the source re-noised to `strength`) and is integrated with Euler steps and CFG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .blend import BlendSettings, BoundaryBlender
from .checks import NonFiniteError, check_finite_tensor, check_finite_value
from .context import EditContext, from_tokens, to_tokens
from .fast_decode import FastDecoder, GraphedStep
from .geometry import Padding
from .masks import dilate_token_mask, pixel_mask_to_token_mask
from .scd import SCDModel
from .text import TextConditioning, concat_conditionings

StepCallback = Callable[[int, int, torch.Tensor], None]
StepFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SamplerSettings:
    """User-facing sampling options (defaults follow the seed's inference settings)."""

    steps: int = 20
    seed: int = 0
    cfg: float = 4.0
    shift: float = 1.0
    dilation: int = 1
    temporal_dilation: int = 0
    strength: float = 1.0
    blend: BlendSettings | None = None
    window_frames: int = 0
    fast: bool = True
    compile: bool | str = False

    def validate(self) -> None:
        """Raise with a clear message for out-of-range or non-finite options."""
        for name in ("cfg", "shift", "strength"):
            check_finite_value(name, getattr(self, name))
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1; got {self.steps}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1]; got {self.strength}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0; got {self.shift}")
        if self.cfg < 0:
            raise ValueError(f"cfg must be >= 0; got {self.cfg}")
        if self.dilation < 0 or self.temporal_dilation < 0:
            raise ValueError("dilation must be >= 0")
        if self.window_frames < 0:
            raise ValueError(f"window_frames must be >= 0 (0 = one pass); got {self.window_frames}")
        if self.compile and not self.fast:
            raise ValueError("compile applies to the fast decoder: turn fast on or compile off")


@dataclass
class EditResult:
    """Edited latents and what the sampler did."""

    latents: torch.Tensor
    edit_tokens: torch.Tensor
    decoder_calls: int
    encoder_calls: int
    source_frames: torch.Tensor | None = None
    padding: Padding | None = None

    def crop(self, frames: torch.Tensor) -> torch.Tensor:
        """Decoded frames on the model's grid → the clip's own frame count and size."""
        return frames if self.padding is None else self.padding.crop(frames)


def flow_sigmas(steps: int, shift: float = 1.0, strength: float = 1.0) -> torch.Tensor:
    """σ schedule from `strength` down to 0 (steps+1 values), time-shifted: σ' = sσ / (1 + (s−1)σ)."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1) * strength
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def edit_token_index(token_mask: torch.Tensor, settings: SamplerSettings,
                     min_dilation: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Dilated token mask [f,h,w] and the flat indices of its tokens (dilated at least `min_dilation`)."""
    dilated = dilate_token_mask(token_mask, max(settings.dilation, min_dilation), settings.temporal_dilation)
    return dilated, dilated.flatten().nonzero().squeeze(1)


def noise_like(latents: torch.Tensor, seed: int) -> torch.Tensor:
    """Seeded Gaussian noise with the shape of `latents`, drawn on the CPU so every device gives the same edit."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(latents.shape, generator=gen, dtype=torch.float32)


@dataclass
class Region:
    """An extra edit region with its own prompt (multi-region edits); `mask` is a pixel MASK [F,H,W]."""

    mask: torch.Tensor
    prompt: TextConditioning


def region_text(positive: TextConditioning, regions: list[tuple[torch.Tensor, TextConditioning]],
                negative: TextConditioning | None, index: torch.Tensor
                ) -> tuple[TextConditioning, torch.Tensor]:
    """One conditioning holding every prompt (concatenated along the sequence) and, per selected token, which prompt
    tokens it may attend to [B,n,T]: tokens of a region see only its prompt, the rest see `positive`.
    """
    texts = [positive] + [cond for _, cond in regions]
    owner = torch.zeros(index.numel(), dtype=torch.long)
    for number, (token_mask, _) in enumerate(regions, start=1):
        owner[token_mask.flatten()[index]] = number
    spans = torch.cat([torch.full((t.embeds.shape[1],), i, dtype=torch.long) for i, t in enumerate(texts)])
    audio = [t.audio_embeds for t in texts]
    combined = TextConditioning(torch.cat([t.embeds for t in texts], dim=1),
                                torch.cat([t.mask for t in texts], dim=1), positive.prompt,
                                torch.cat(audio, dim=1) if all(a is not None for a in audio) else None)
    keep = (spans[None, :] == owner[:, None]) & (combined.mask[0].cpu()[None, :] > 0)
    if negative is None:
        return combined, keep[None]
    both = concat_conditionings([combined, negative])
    length = both.embeds.shape[1]
    keep = F.pad(keep, (0, length - keep.shape[1]))
    negative_keep = (both.mask[1].cpu() > 0)[None, :].expand(index.numel(), -1)
    return both, torch.stack([keep, negative_keep])


def _windows(index: torch.Tensor, grid: tuple[int, int, int], window_frames: int) -> list[torch.Tensor]:
    """Positions (into `index`) of the selected tokens of each window of `window_frames` latent frames."""
    if window_frames <= 0:
        return [torch.arange(index.numel())]
    frame = index // (grid[1] * grid[2])
    out = []
    for start in range(0, grid[0], window_frames):
        pos = ((frame >= start) & (frame < start + window_frames)).nonzero().squeeze(1)
        if pos.numel():
            out.append(pos)
    return out


def _step_function(scd: SCDModel, plan, settings: SamplerSettings, example_x: torch.Tensor,
                   example_sigma: torch.Tensor) -> StepFunction:
    """The per-step decoder: the cached fast path where it applies (CUDA-graphed on a GPU, optionally compiled),
    else `SCDModel.decode`."""
    if settings.fast:
        try:
            fast = FastDecoder(scd, plan, compile=settings.compile)
        except NotImplementedError:
            fast = None
        if fast is not None:
            step = fast
            if example_x.is_cuda:
                step = GraphedStep(fast, example_x, example_sigma)

            def counted(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
                scd.decoder_calls += 1
                return step(x, sigma)
            return counted
    return lambda x, sigma: scd.decode(plan, x, sigma)


def check_inputs_finite(ctx: EditContext, positive: TextConditioning, negative: TextConditioning | None,
                        regions: list[Region] | None) -> None:
    """Refuse NaN/Inf in the edit context's latents and in every conditioning before any model runs."""
    hint = "re-encode the clip with EditCtrl Encode"
    check_finite_tensor("edit context source latents", ctx.source_latents, hint)
    check_finite_tensor("edit context background latents", ctx.background_latents, hint)
    named = [("positive", positive), ("negative", negative)]
    named += [(f"region {i} prompt", r.prompt) for i, r in enumerate(regions or [], start=1)]
    for name, cond in named:
        if cond is not None:
            advice = "re-encode the prompt; the text encoder or a node after it produced NaN/Inf"
            check_finite_tensor(f"{name} conditioning", cond.embeds, advice)
            check_finite_tensor(f"{name} audio conditioning", cond.audio_embeds, advice)


def region_on_grid(ctx: EditContext, region: Region, number: int) -> torch.Tensor:
    """A region's pixel mask [F,H,W] (or one frame for all) checked against the clip and padded like it."""
    mask = region.mask if region.mask.ndim == 3 else region.mask.unsqueeze(0)
    shape = tuple(ctx.crop(ctx.mask).shape)
    if mask.shape[0] == 1:
        mask = mask.expand(shape[0], -1, -1)
    if tuple(mask.shape) != shape:
        raise ValueError(f"region {number} mask {tuple(region.mask.shape)} does not match the edit context {shape}; "
                         "make region masks from the same frames")
    check_finite_tensor(f"region {number} mask", mask)
    return mask if ctx.padding is None else ctx.padding.pad(mask)


def check_finite_step(x: torch.Tensor, step: int, steps: int) -> None:
    """Stop the edit at the first step whose latents went NaN/Inf (never return a black edit)."""
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"the edit latents became NaN/Inf at step {step + 1} of {steps}; the model's velocity "
                             "overflowed. Try float32 or bfloat16 instead of float16, a lower cfg, or check the "
                             "weights (a LoRA at a very high strength can do this)")


@torch.no_grad()
def sample_edit(scd: SCDModel, ctx: EditContext, positive: TextConditioning, negative: TextConditioning | None,
                settings: SamplerSettings, callback: StepCallback | None = None,
                regions: list[Region] | None = None) -> EditResult:
    """Edit the masked region of `ctx` following the prompt; everything outside the dilated mask is the source.

    `regions` add areas with their own prompts (one pass; each region's tokens attend only to their prompt).
    With `settings.window_frames`, the encoder runs window by window (K/V cache carried across windows) and each
    window's tokens are denoised in turn.
    """
    settings.validate()
    check_inputs_finite(ctx, positive, negative, regions)
    grid = ctx.grid.shape
    blender = BoundaryBlender(ctx.mask, settings.blend) if settings.blend is not None else None
    min_dilation = blender.required_dilation if blender else 0
    dilated, index = edit_token_index(ctx.token_mask, settings, min_dilation)
    region_masks = []
    for number, region in enumerate(regions or [], start=1):
        region_mask = region_on_grid(ctx, region, number)
        region_dilated, _ = edit_token_index(pixel_mask_to_token_mask(region_mask), settings, min_dilation)
        region_masks.append((region_dilated, region.prompt))
        dilated = dilated | region_dilated
    index = dilated.flatten().nonzero().squeeze(1)
    device = scd.stack.device
    source = to_tokens(ctx.source_latents.float()).to(device)
    calls0 = (scd.decoder_calls, scd.encoder_calls)
    if index.numel() == 0:
        return EditResult(ctx.source_latents.clone(), dilated, 0, 0, ctx.frames, ctx.padding)
    use_cfg = negative is not None and settings.cfg != 1.0
    keep = None
    if region_masks:
        text, keep = region_text(positive, region_masks, negative if use_cfg else None, index)
        encoder_text = TextConditioning(text.embeds[:1], text.mask[:1], audio_embeds=None if text.audio_embeds is None
                                        else text.audio_embeds[:1])
    else:
        text = concat_conditionings([positive, negative]) if use_cfg else positive
        encoder_text = positive
    background = to_tokens(ctx.background_latents)
    if settings.window_frames:
        context = scd.encode_windowed(background, grid, encoder_text, settings.window_frames)
    else:
        context = scd.encode(background, grid, encoder_text)
    noise_all = to_tokens(noise_like(ctx.source_latents, settings.seed)).to(device)
    sigmas = flow_sigmas(settings.steps, settings.shift, settings.strength)
    batch = 2 if use_cfg else 1
    tokens = source.clone()
    windows = _windows(index, grid, settings.window_frames)
    total = settings.steps * len(windows)
    for number, positions in enumerate(windows):
        idx = index[positions]
        plan = scd.plan(idx, context, grid, text, background=ctx.background_latents, edit_mask=ctx.token_mask,
                        text_keep=None if keep is None else keep[:, positions])
        noise = noise_all[:, idx.to(device)]
        x0 = source[:, idx.to(device)]
        x = (1 - sigmas[0]) * x0 + sigmas[0] * noise
        decode = _step_function(scd, plan, settings, x.expand(batch, -1, -1).contiguous(),
                                torch.full((batch,), float(sigmas[0]), device=device))
        for step in range(settings.steps):
            sigma, sigma_next = float(sigmas[step]), float(sigmas[step + 1])
            velocity = decode(x.expand(batch, -1, -1), torch.full((batch,), sigma, device=device)).float()
            if use_cfg:
                cond, uncond = velocity.chunk(2)
                velocity = uncond + settings.cfg * (cond - uncond)
            x = x + (sigma_next - sigma) * velocity
            check_finite_step(x, step, settings.steps)
            if blender is not None:
                x = blender.step(x, x0, noise, sigma_next, step, settings.steps, idx)
            if callback is not None:
                callback(number * settings.steps + step + 1, total, x)
        tokens[:, idx.to(device)] = x
    return EditResult(from_tokens(tokens, grid).cpu(), dilated, scd.decoder_calls - calls0[0],
                      scd.encoder_calls - calls0[1], ctx.frames, ctx.padding)
