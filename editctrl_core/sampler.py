"""Sparse flow-matching Euler edit sampler: the SCD decoder runs only on the masked (+dilated) tokens.

Outside the dilated token mask latents are never touched and stay the clean source; inside, the edit starts
from noise (or from the source re-noised to `strength`) and is integrated with Euler steps and CFG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .blend import BlendSettings, BoundaryBlender
from .context import EditContext, from_tokens, to_tokens
from .masks import dilate_token_mask
from .scd import SCDModel
from .text import TextConditioning, concat_conditionings

StepCallback = Callable[[int, int, torch.Tensor], None]


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

    def validate(self) -> None:
        """Raise with a clear message for out-of-range options."""
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


@dataclass
class EditResult:
    """Edited latents and what the sampler did."""

    latents: torch.Tensor
    edit_tokens: torch.Tensor
    decoder_calls: int
    encoder_calls: int


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


@torch.no_grad()
def sample_edit(scd: SCDModel, ctx: EditContext, positive: TextConditioning, negative: TextConditioning | None,
                settings: SamplerSettings, callback: StepCallback | None = None) -> EditResult:
    """Edit the masked region of `ctx` following the prompt; everything outside the dilated mask is the source."""
    settings.validate()
    grid = ctx.grid.shape
    blender = BoundaryBlender(ctx.mask, settings.blend) if settings.blend is not None else None
    dilated, index = edit_token_index(ctx.token_mask, settings, blender.required_dilation if blender else 0)
    device = scd.stack.device
    source = to_tokens(ctx.source_latents.float()).to(device)
    calls0 = (scd.decoder_calls, scd.encoder_calls)
    if index.numel() == 0:
        return EditResult(ctx.source_latents.clone(), dilated, 0, 0)
    use_cfg = negative is not None and settings.cfg != 1.0
    text = concat_conditionings([positive, negative]) if use_cfg else positive
    context = scd.encode(to_tokens(ctx.background_latents), grid, positive)
    plan = scd.plan(index, context, grid, text, background=ctx.background_latents, edit_mask=ctx.token_mask)
    noise = to_tokens(noise_like(ctx.source_latents, settings.seed)).to(device)[:, index.to(device)]
    x0 = source[:, index.to(device)]
    sigmas = flow_sigmas(settings.steps, settings.shift, settings.strength)
    x = (1 - sigmas[0]) * x0 + sigmas[0] * noise
    batch = 2 if use_cfg else 1
    for step in range(settings.steps):
        sigma, sigma_next = float(sigmas[step]), float(sigmas[step + 1])
        velocity = scd.decode(plan, x.expand(batch, -1, -1), torch.full((batch,), sigma)).float()
        if use_cfg:
            cond, uncond = velocity.chunk(2)
            velocity = uncond + settings.cfg * (cond - uncond)
        x = x + (sigma_next - sigma) * velocity
        if blender is not None:
            x = blender.step(x, x0, noise, sigma_next, step, settings.steps, index)
        if callback is not None:
            callback(step + 1, settings.steps, x)
    tokens = source.clone()
    tokens[:, index.to(device)] = x
    return EditResult(from_tokens(tokens, grid).cpu(), dilated, scd.decoder_calls - calls0[0],
                      scd.encoder_calls - calls0[1])
