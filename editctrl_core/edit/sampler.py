"""Sparse flow-matching Euler edit sampler: the SCD decoder runs only on the masked (+dilated) tokens.

Outside the dilated token mask latents are never touched and stay the clean source; inside, the edit starts
from noise (or from the source re-noised to `strength`) and is integrated with Euler steps and CFG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..checks import NonFiniteError, all_finite, check_finite_tensor, check_finite_value
from ..conditioning.text import TextConditioning, concat_conditionings
from .blend import BlendSettings, BoundaryBlender, composite
from .context import EditContext, from_tokens, to_tokens
from .fast_decode import (
    ENCODER_CACHE,
    STEP_CACHE,
    FastDecoder,
    compiled_video_block,
    fast_decoder_unsupported,
    video_block,
)
from .geometry import Padding
from .guidance import DEFAULT_CFG, DEFAULT_RESCALE, guide_velocity
from .masks import dilate_token_mask, pixel_mask_to_token_mask
from .scd import SCDModel, WindowEncoder
from .schedules import DISTILLED_SIGMAS, check_sigmas, ltx2_sigmas
from .training_free import FastMaskLocal, FullModel, MaskLocalModel

SAMPLER_MODES = ("scd", "training_free", "full")
SCHEDULERS = ("ltx2", "distilled", "linear")
DEFAULT_WINDOW_OVERLAP = 2  # latent frames; see SamplerSettings
DEFAULT_BACKGROUND_REFRESH = 2  # training_free steps run two-way; see SamplerSettings
StepCallback = Callable[[int, int, torch.Tensor], None]
StepFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SamplerSettings:
    """User-facing sampling options (defaults follow the seed's inference settings).

    ``background_refresh`` (`training_free` only): how many steps run the whole clip two-way, as ``full`` does, and
    re-record the background's keys/values for the one-way steps after them (0: the background never sees the edit,
    the mask-local cost; each refresh costs one ``full`` step; ``steps`` or more: the ``full`` edit itself). Default
    2: on the base oracle (training/recipes/base_oracle.py, 20 steps) the one-way edit's masked-region pixel error was
    44% above ``full``'s, with 1 / 2 / 4 refreshes +4.4% / +0.8% / -0.3% (latent +12% / +3.9% / +0.4%). It needs the
    fast path; the reference path (``fast`` off) runs one-way.

    ``window_overlap`` (`scd` with ``window_frames``): a window also denoises the last that many latent frames before
    it, replaced every step by their final edit re-noised to the step's σ (inpainting by replacement, across time),
    so the window's tokens are denoised jointly with the edit they continue; those frames keep the earlier result.
    Measured on the trained tiny model (tests/test_window_seams.py): windows of 3 latent frames seam by +0.012 latent
    units without overlap, +0.004 with 1 frame, +0.002 (not significant) with 2, the default; `training_free` needs
    none (earlier windows are its clean context).
    """

    steps: int = 30
    seed: int = 0
    cfg: float = DEFAULT_CFG
    shift: float = 1.0
    dilation: int = 1
    temporal_dilation: int = 0
    strength: float = 1.0
    blend: BlendSettings | None = None
    window_frames: int = 0
    fast: bool = True
    compile: bool | str = False
    mode: str = "scd"
    scheduler: str = "ltx2"
    sigmas: torch.Tensor | None = None
    guidance_rescale: float = DEFAULT_RESCALE
    background_refresh: int = DEFAULT_BACKGROUND_REFRESH
    window_overlap: int = DEFAULT_WINDOW_OVERLAP

    def validate(self) -> None:
        """Raise with a clear message for out-of-range or non-finite options."""
        for name in ("cfg", "shift", "strength", "guidance_rescale"):
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
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}; got {self.scheduler!r}")
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale must be in [0, 1]; got {self.guidance_rescale}")
        if self.sigmas is not None:
            check_sigmas(self.sigmas, self.steps)
            if self.strength != 1.0:
                raise ValueError("strength applies to the built-in schedules; with SIGMAS, start the list at the σ "
                                 "to edit from (e.g. BasicScheduler's denoise) and leave strength at 1")
        elif self.scheduler == "distilled":
            if self.steps != len(DISTILLED_SIGMAS) - 1:
                raise ValueError(f"the distilled schedule has {len(DISTILLED_SIGMAS) - 1} steps; set steps to "
                                 f"{len(DISTILLED_SIGMAS) - 1} (got {self.steps})")
            if self.strength != 1.0:
                raise ValueError("the distilled schedule starts from pure noise: leave strength at 1")
        if self.mode not in SAMPLER_MODES:
            raise ValueError(f"mode must be one of {', '.join(SAMPLER_MODES)}; got {self.mode!r} (resolve 'auto' "
                             "with EditModel.resolve_mode first)")
        if self.compile and not self.fast:
            raise ValueError("compile applies to the fast decoder: turn fast on or compile off")
        if self.background_refresh < 0:
            raise ValueError(f"background_refresh must be >= 0 (0 = never); got {self.background_refresh}")
        if self.window_overlap < 0:
            raise ValueError(f"window_overlap must be >= 0 (latent frames); got {self.window_overlap}")
        if self.background_refresh not in (0, DEFAULT_BACKGROUND_REFRESH) and self.mode == "training_free" \
                and not self.fast:
            raise ValueError("background_refresh runs on the fast mask-local path: turn fast on or set it to 0")

    @property
    def refreshes(self) -> int:
        """The background refreshes this edit runs: `training_free` on the fast path only."""
        return self.background_refresh if self.mode == "training_free" and self.fast else 0


@dataclass
class EditResult:
    """Edited latents and what the sampler did (`decoder`: "fast" or "reference", the per-step path that ran;
    `notes`: what the user should know about how it ran, e.g. why the fast path was not used)."""

    latents: torch.Tensor
    edit_tokens: torch.Tensor
    decoder_calls: int
    encoder_calls: int
    source_frames: torch.Tensor | None = None
    padding: Padding | None = None
    mode: str = "scd"
    pixel_mask: torch.Tensor | None = None
    decoder: str = ""
    notes: list[str] = field(default_factory=list)

    def crop(self, frames: torch.Tensor) -> torch.Tensor:
        """Decoded frames on the model's grid → the clip's own frame count and size."""
        return frames if self.padding is None else self.padding.crop(frames)

    @property
    def mask(self) -> torch.Tensor | None:
        """The pixel mask [F,H,W] the edit used (the main mask and every region), at the clip's own size."""
        return None if self.pixel_mask is None else self.crop(self.pixel_mask)

    def composite(self, edited: torch.Tensor, source: torch.Tensor, feather_px: float) -> torch.Tensor:
        """Frames at the clip's size [F,H,W,3] pasted into the source by the edit's own mask (every region)."""
        return composite(edited, source, self.mask, feather_px)


def refresh_steps(steps: int, refreshes: int) -> set[int]:
    """The steps at which `training_free` runs the whole clip two-way and re-records the background (see
    ``SamplerSettings.background_refresh``): `refreshes` of them evenly spaced after step 0 (whose edit tokens are
    pure noise), every step when `refreshes` >= `steps` (= the ``full`` mode)."""
    if refreshes >= steps:
        return set(range(steps))
    return {(i + 1) * steps // (refreshes + 1) for i in range(refreshes)}


def edit_sigmas(settings: SamplerSettings, num_tokens: int) -> torch.Tensor:
    """The σ schedule of an edit (steps+1 values): given SIGMAS, the distilled list, LTX-2's own schedule for the
    clip's `num_tokens` latent tokens, or the plain linear one with `shift`."""
    if settings.sigmas is not None:
        return check_sigmas(settings.sigmas, settings.steps)
    if settings.scheduler == "distilled":
        return torch.tensor(DISTILLED_SIGMAS, dtype=torch.float32)
    if settings.scheduler == "ltx2":
        return ltx2_sigmas(settings.steps, num_tokens, strength=settings.strength)
    return flow_sigmas(settings.steps, settings.shift, settings.strength)


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


def _frames_of(index: torch.Tensor, grid: tuple[int, int, int], start: int, stop: int) -> torch.Tensor:
    """Positions into `index` (flat f·h·w token indices) of its tokens in latent frames [start, stop)."""
    frame = index // (grid[1] * grid[2])
    return ((frame >= max(start, 0)) & (frame < stop)).nonzero().squeeze(1)


def _windows(index: torch.Tensor, grid: tuple[int, int, int], window_frames: int
             ) -> list[tuple[int, int, torch.Tensor]]:
    """(first frame, end frame, positions into `index` of its selected tokens) of each window of `window_frames`
    latent frames that has tokens to edit."""
    if window_frames <= 0:
        return [(0, grid[0], torch.arange(index.numel()))]
    out = []
    for start in range(0, grid[0], window_frames):
        stop = min(grid[0], start + window_frames)
        pos = _frames_of(index, grid, start, stop)
        if pos.numel():
            out.append((start, stop, pos))
    return out


def choose_decoder(scd: SCDModel, settings: SamplerSettings) -> tuple[bool, str | None]:
    """Whether the SCD edit's steps run the fast decoder, decided once per edit before any step, and the note that
    says why not when fast was asked for but this model's configuration is not supported by it."""
    if not settings.fast or settings.mode != "scd":
        return False, None
    unsupported = fast_decoder_unsupported(scd)
    if unsupported is None:
        return True, None
    return False, f"the fast decoder does not support this model ({unsupported}), so every step ran SCDModel.decode"


def _step_function(scd: SCDModel, plan, settings: SamplerSettings, fast: bool, example_x: torch.Tensor,
                   example_sigma: torch.Tensor) -> StepFunction:
    """The per-step decoder: with `fast` (see :func:`choose_decoder`) the cached fast path (CUDA-graphed on a GPU,
    optionally compiled; prepared through the process's :data:`STEP_CACHE`, so the same edit again reuses its caches
    and graph), else `SCDModel.decode`. The first call must be at the example inputs (sample_edit's first step)."""
    if fast:
        decoder = FastDecoder(scd, plan, compile=settings.compile, defer=True)
        step, first = STEP_CACHE.prepare("scd", decoder, (example_x, example_sigma), example_x.is_cuda)
        return _counted(step, first, scd)
    return lambda x, sigma: scd.decode(plan, x, sigma)


def _counted(step: StepFunction, first: torch.Tensor | None, owner, refresh: StepFunction | None = None
             ) -> StepFunction:
    """Count decoder calls on `owner`; a fresh capture's warm-up output (the step at the example inputs) answers the
    first call instead of a replay. ``counted(x, σ, True)`` runs `refresh` instead (see ``background_refresh``)."""
    pending = [first]

    def counted(x: torch.Tensor, sigma: torch.Tensor, refreshing: bool = False) -> torch.Tensor:
        owner.decoder_calls += 1
        if refreshing:
            pending[0] = None
            return refresh(x, sigma)
        if pending[0] is not None:
            out, pending[0] = pending[0], None
            return out
        return step(x, sigma)
    return counted


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
    if not all_finite(x):
        raise NonFiniteError(f"the edit latents became NaN/Inf at step {step + 1} of {steps}; the model's velocity "
                             "overflowed. Try float32 or bfloat16 instead of float16, a lower cfg, or check the "
                             "weights (a LoRA at a very high strength can do this)")


def _encode(scd: SCDModel, background: torch.Tensor, grid: tuple[int, int, int], text: TextConditioning,
            fast: bool, fps: float) -> torch.Tensor:
    """The SCD encoder once per edit for every prompt of `text` (CFG's negative too): frame-causal attention by
    chunks (no dense [N,N] mask) on the fast path, its output kept per process for the same background, prompts,
    frame rate and weights (:data:`ENCODER_CACHE`)."""
    if not fast:
        return scd.encode(background, grid, text, fps)
    scd.encoder_calls += 1
    return ENCODER_CACHE.encode(scd, background, grid, text, fps)


def _window_context(encoder: WindowEncoder, context: torch.Tensor, tokens: torch.Tensor, background: torch.Tensor,
                    start: int, stop: int) -> torch.Tensor:
    """`context` [B,N,D] with frames [start, stop) encoded after the frames before them as edited so far (`tokens`)."""
    per_frame = encoder.per_frame
    encoder.commit(tokens, start)
    context[:, start * per_frame:stop * per_frame] = encoder.context(background, start, stop).to(context)
    return context


def _background_keep(positive: TextConditioning, region_masks: list, negative: TextConditioning | None,
                     use_cfg: bool, pending: torch.Tensor) -> torch.Tensor:
    """Per-token prompt masks [B,P,T] of the clean background tokens (those not pending an edit)."""
    return region_text(positive, region_masks, negative if use_cfg else None, (~pending).nonzero().squeeze(1))[1]


def _all_keep(positive: TextConditioning, region_masks: list, negative: TextConditioning | None, use_cfg: bool,
              grid: tuple[int, int, int]) -> torch.Tensor:
    """Per-token prompt masks [B,N,T] of every token of the clip (the `full` mode runs them all)."""
    everything = torch.arange(grid[0] * grid[1] * grid[2])
    return region_text(positive, region_masks, negative if use_cfg else None, everything)[1]


def _pretrained_step(model: MaskLocalModel | FullModel, tokens: torch.Tensor, idx: torch.Tensor,
                     pending: torch.Tensor, grid: tuple[int, int, int], text: TextConditioning,
                     settings: SamplerSettings, example: tuple[torch.Tensor, torch.Tensor],
                     text_keep: torch.Tensor | None, background_keep: torch.Tensor | None,
                     all_keep: torch.Tensor | None) -> StepFunction:
    """The per-step function of the `training_free` (cached fast path, CUDA-graphed on a GPU, optionally
    compiled) or `full` mode for one window; tokens not pending an edit are clean context (earlier windows' edits
    included)."""
    if isinstance(model, FullModel):
        plan = model.plan(idx, tokens, grid, text, text_keep=all_keep)
        step: StepFunction = lambda x, sigma: model.decode(plan, x, sigma)  # noqa: E731
    else:
        background = (~pending).nonzero().squeeze(1)
        plan = model.plan(idx, tokens, grid, text, background_index=background, text_keep=text_keep,
                          background_keep=background_keep)
        if settings.fast:
            block_fn = compiled_video_block("inductor" if settings.compile is True else settings.compile) \
                if settings.compile else video_block
            fast = FastMaskLocal(model, plan, block_fn=block_fn, defer=True)
            step, first = STEP_CACHE.prepare("training_free", fast, example, example[0].is_cuda)
            return _counted(step, first, model, STEP_CACHE.current.refresh)
        step = lambda x, sigma: model.decode(plan, x, sigma)  # noqa: E731
    return _counted(step, None, model)


@torch.no_grad()
def sample_edit(scd: SCDModel, ctx: EditContext, positive: TextConditioning, negative: TextConditioning | None,
                settings: SamplerSettings, callback: StepCallback | None = None,
                regions: list[Region] | None = None) -> EditResult:
    """Edit the masked region of `ctx` following the prompt; everything outside the dilated mask is the source.

    `regions` add areas with their own prompts (one pass; each region's tokens attend only to their prompt); the
    union of all masks is the edit mask (background blanking, adapters, blend, composite). With CFG every pass, the
    SCD encoder included, runs the negative prompt for the unconditional branch. With `settings.window_frames`, the
    windows are edited in turn, each conditioned on the earlier ones as edited. RoPE uses the clip's `ctx.fps`.
    """
    settings.validate()
    check_inputs_finite(ctx, positive, negative, regions)
    fast_scd, fallback = choose_decoder(scd, settings)
    decoder = "fast" if fast_scd or (settings.fast and settings.mode == "training_free") else "reference"
    notes = [] if fallback is None else [fallback]
    if settings.background_refresh not in (0, DEFAULT_BACKGROUND_REFRESH) and settings.mode != "training_free":
        notes.append(f"background_refresh applies to the training_free mode only; the {settings.mode} edit ignored it")
    if settings.mode == "training_free" and settings.background_refresh and not settings.fast:
        notes.append("background_refresh needs the fast path: the reference training_free edit ran one-way")
    region_pixels = [region_on_grid(ctx, region, number) for number, region in enumerate(regions or [], start=1)]
    ctx = ctx.with_regions(region_pixels)
    grid = ctx.grid.shape
    device = scd.stack.device
    blender = BoundaryBlender(ctx.mask, settings.blend, device=device) if settings.blend is not None else None
    min_dilation = blender.required_dilation if blender else 0
    dilated, index = edit_token_index(ctx.token_mask, settings, min_dilation)
    region_masks = [(edit_token_index(pixel_mask_to_token_mask(mask), settings, min_dilation)[0], region.prompt)
                    for mask, region in zip(region_pixels, regions or [])]
    source = to_tokens(ctx.source_latents.float()).to(device)
    calls0 = (scd.decoder_calls, scd.encoder_calls)
    if index.numel() == 0:
        return EditResult(ctx.source_latents.clone(), dilated, 0, 0, ctx.frames, ctx.padding, settings.mode, ctx.mask)
    use_cfg = negative is not None and settings.cfg != 1.0
    keep = None
    if region_masks:
        text, keep = region_text(positive, region_masks, negative if use_cfg else None, index)
    else:
        text = concat_conditionings([positive, negative]) if use_cfg else positive
    windows = _windows(index, grid, settings.window_frames if settings.mode != "full" else 0)
    background = to_tokens(ctx.background_latents)
    global_in = ctx.global_input() if settings.mode == "scd" and scd.global_context is not None else None
    encoder = None
    if settings.mode == "scd":
        if settings.window_frames:
            encoder = WindowEncoder(scd, grid, text, ctx.fps)
            context = torch.zeros(text.embeds.shape[0], background.shape[1], scd.stack.model.proj_in.out_features,
                                  device=device, dtype=scd.stack.dtype)
        else:
            context = _encode(scd, background, grid, text, settings.fast, ctx.fps)
    else:
        pretrained = (MaskLocalModel if settings.mode == "training_free" else FullModel)(scd.stack, ctx.fps)
    noise_all = to_tokens(noise_like(ctx.source_latents, settings.seed)).to(device)
    sigmas = edit_sigmas(settings, ctx.grid.num_tokens)
    batch = 2 if use_cfg else 1
    tokens = source.clone()
    total = settings.steps * len(windows)
    pending = dilated.flatten().clone()
    refreshes = refresh_steps(settings.steps, settings.refreshes)
    if refreshes:
        notes.append(f"background_refresh {settings.background_refresh}: step(s) "
                     f"{', '.join(str(i + 1) for i in sorted(refreshes))} of {settings.steps} ran the whole clip "
                     "two-way (each as costly as a full step)")
    overlap = settings.window_overlap if settings.mode == "scd" and len(windows) > 1 else 0
    for number, (first, end, own) in enumerate(windows):
        positions = torch.cat([_frames_of(index, grid, first - overlap, first), own]) if number and overlap else own
        carried = positions.numel() - own.numel()
        idx = index[positions]
        noise = noise_all[:, idx.to(device)]
        x0 = source[:, idx.to(device)]
        x = (1 - sigmas[0]) * x0 + sigmas[0] * noise
        held = tokens[:, idx[:carried].to(device)]
        x[:, :carried] = (1 - sigmas[0]) * held + sigmas[0] * noise[:, :carried]
        example = (x.expand(batch, -1, -1).contiguous(), torch.full((batch,), float(sigmas[0]), device=device))
        text_keep = None if keep is None else keep[:, positions]
        if settings.mode == "scd":
            if encoder is not None:
                context = _window_context(encoder, context, tokens, background, first, end)
            plan = scd.plan(idx, context, grid, text, background=ctx.background_latents, edit_mask=ctx.token_mask,
                            text_keep=text_keep, fps=ctx.fps, global_input=global_in)
            decode = _step_function(scd, plan, settings, fast_scd, *example)
        else:
            background_keep = None
            if settings.mode == "training_free":
                background_keep = None if keep is None else _background_keep(positive, region_masks, negative,
                                                                              use_cfg, pending)
            decode = _pretrained_step(pretrained, tokens, idx, pending, grid, text, settings, example, text_keep,
                                      background_keep, None if keep is None else
                                      _all_keep(positive, region_masks, negative, use_cfg, grid))
        for step in range(settings.steps):
            sigma, sigma_next = float(sigmas[step]), float(sigmas[step + 1])
            args = (x.expand(batch, -1, -1), torch.full((batch,), sigma, device=device))
            velocity = (decode(*args, True) if step in refreshes else decode(*args)).float()
            if use_cfg:
                cond, uncond = velocity.chunk(2)
                velocity = guide_velocity(cond, uncond, x, sigma, settings.cfg, settings.guidance_rescale)
            x = x + (sigma_next - sigma) * velocity
            check_finite_step(x, step, settings.steps)
            if blender is not None:
                x = blender.step(x, x0, noise, sigma_next, step, settings.steps, idx)
            x[:, :carried] = (1 - sigma_next) * held + sigma_next * noise[:, :carried]
            if callback is not None:
                callback(number * settings.steps + step + 1, total, x)
        tokens[:, idx[carried:].to(device)] = x[:, carried:]
        pending[idx[carried:]] = False
    decoder_calls = scd.decoder_calls - calls0[0] if settings.mode == "scd" else pretrained.decoder_calls
    return EditResult(from_tokens(tokens, grid).cpu(), dilated, decoder_calls, scd.encoder_calls - calls0[1],
                      ctx.frames, ctx.padding, settings.mode, ctx.mask, decoder, notes)
