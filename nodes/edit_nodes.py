"""Nodes of one edit: VAE encode (frames + mask → edit context), sparse SCD sampler, VAE decode, composite."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..editctrl_core.checks import check_finite_tensor
from ..editctrl_core.conditioning.text import TextConditioning
from ..editctrl_core.edit.blend import BLEND_MODES, BlendSettings, composite
from ..editctrl_core.edit.context import DEFAULT_FPS, GEOMETRY_MODES, EditContext, prepare_edit
from ..editctrl_core.edit.geometry import GeometryError
from ..editctrl_core.edit.guidance import DEFAULT_CFG, DEFAULT_RESCALE
from ..editctrl_core.edit.sampler import (
    DEFAULT_BACKGROUND_REFRESH,
    DEFAULT_WINDOW_OVERLAP,
    SCHEDULERS,
    EditResult,
    Region,
    SamplerSettings,
)
from ..editctrl_core.edit.schedules import AUTO
from ..editctrl_core.editmodel import EDIT_MODES, EditModel
from ..editctrl_core.media.vae import decode_latents
from ..editctrl_core.media.vae_tiles import local_decode
from . import vram
from .common import (
    CATEGORY,
    EditBlend,
    EditConditioning,
    EditContextType,
    EditLatents,
    EditModelType,
    EditRegions,
    EditVAE,
    Progress,
    check_interrupt,
    notice,
    pick_device,
)

log = logging.getLogger("editctrl")


class EditCtrlVAEEncode(io.ComfyNode):
    """Encode the source clip and its masked background once per edit."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditCtrlVAEEncode",
            display_name="EditCtrl Encode Video + Mask",
            category=CATEGORY,
            description="IMAGE frames + MASK → edit context (source latents, background latents, token mask).",
            inputs=[
                EditVAE.Input("vae", tooltip="LTX-2's video VAE (from the model loader)."),
                io.Image.Input("images", tooltip="Video frames [F,H,W,3], any frame count and size."),
                io.Mask.Input("mask", tooltip="Edit region [F,H,W] (or one frame for all)."),
                io.Combo.Input("geometry", options=list(GEOMETRY_MODES), default="pad",
                               tooltip="pad: clips that are not 8n+1 frames at multiples of 32 px are padded "
                                       "(edges and last frame repeated), edited and cropped back, so the clip's "
                                       "own frame count and size come out; strict: refuse them, naming every "
                                       "problem."),
                io.Float.Input("frame_rate", default=DEFAULT_FPS, min=1.0, max=240.0, step=0.001, optional=True,
                               tooltip="The clip's frames per second (Get Video Components' fps): LTX-2's "
                                       "positions are in seconds, so the model must know it."),
            ],
            outputs=[EditContextType.Output(display_name="edit_context",
                                            tooltip="Source and background latents and the token mask."),
                     io.Image.Output(display_name="images", tooltip="The source frames, unchanged (for Composite)."),
                     io.Mask.Output(display_name="mask", tooltip="The mask, one per frame (for Composite).")],
        )

    @classmethod
    def execute(cls, vae, images: torch.Tensor, mask: torch.Tensor, geometry: str = "pad",
                frame_rate: float = DEFAULT_FPS) -> io.NodeOutput:
        check_interrupt()
        vram.load(vae)
        try:
            ctx = prepare_edit(vae, images, mask, geometry=geometry, fps=frame_rate)
        except GeometryError as exc:
            raise ValueError(f"EditCtrl Encode: {exc}") from exc
        return io.NodeOutput(ctx, images, ctx.crop(ctx.mask), ui=notice("EditCtrl Encode", ctx.notes))


class EditCtrlSampler(io.ComfyNode):
    """Denoise only the masked tokens with the SCD decoder; the encoder runs once per edit."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditCtrlSampler",
            display_name="EditCtrl Edit Sampler",
            category=CATEGORY,
            description="Denoises only the masked (+dilated) region of the clip following the prompt; everything "
                        "else stays the source. Shows which mode ran and how many tokens it edited.",
            inputs=[
                EditModelType.Input("model", tooltip="From EditCtrl Load LTX-2 (with any LoRAs/adapters)."),
                EditContextType.Input("edit_context", tooltip="From EditCtrl Encode Video + Mask."),
                EditConditioning.Input("positive", tooltip="What the edited region should show."),
                EditConditioning.Input("negative", optional=True, tooltip="For CFG: what to steer away from."),
                EditBlend.Input("blend", optional=True,
                                tooltip="Boundary blending; unconnected = 'renoised' with a 64 px falloff."),
                EditRegions.Input("regions", optional=True,
                                  tooltip="Extra regions with their own prompts (EditCtrl Region), edited in the "
                                          "same pass; the rest of the edit mask follows 'positive'."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True,
                             tooltip="Noise seed (drawn on the CPU: the same edit on every device)."),
                io.Int.Input("steps", default=30, min=1, max=200, tooltip="Denoising steps (LTX-2: 30; distilled: 8)."),
                io.Float.Input("cfg", default=DEFAULT_CFG, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance (LTX-2's pipelines: 3.0); needs a negative prompt. "
                                       "1 = off."),
                io.Float.Input("shift", default=1.0, min=0.05, max=20.0, step=0.05,
                               tooltip="scheduler 'linear' only: flow-matching time shift; > 1 spends more steps at "
                                       "high noise (LTX-2's own schedule derives its shift from the clip size)."),
                io.Int.Input("dilation", default=1, min=0, max=16,
                             tooltip="Grow the edit region by this many latent tokens (32 px each)."),
                io.Float.Input("strength", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="1 = regenerate the region from noise; lower keeps more of the source."),
                io.Int.Input("window_frames", default=0, min=0, max=1024,
                             tooltip="Long clips: encode and denoise this many latent frames at a time (the causal "
                                     "encoder carries its K/V cache across windows). 0 = one pass."),
                io.Combo.Input("mode", options=list(EDIT_MODES), default="auto", optional=True,
                               tooltip="auto: scd when an SCD LoRA or EditCtrl adapters are loaded, else "
                                       "training_free. scd: the split encoder/decoder (needs weights trained for "
                                       "it). training_free: the official weights on the masked tokens only, the "
                                       "clean background as context (cost ∝ mask). full: the whole clip every step "
                                       "(the quality reference; what native inpainting costs)."),
                io.Combo.Input("scheduler", options=[AUTO, *SCHEDULERS], default=AUTO, optional=True,
                               tooltip="auto: distilled when the checkpoint says it is distilled (its metadata, or "
                                       "Lightricks' ltx-2…-distilled file name), else ltx2. ltx2: LTX-2's own σ "
                                       "schedule (shift from the clip's token count, stretched to 0.1); distilled: "
                                       "the official 8-step list of the distilled checkpoints; linear: linspace "
                                       "with 'shift'. A SIGMAS input overrides it. The node says which ran."),
                io.Float.Input("guidance_rescale", default=DEFAULT_RESCALE, min=0.0, max=1.0, step=0.05,
                               optional=True,
                               tooltip="Rescale of the guided prediction toward the conditional one's spread "
                                       "(LTX-2's pipelines: 0.7; 0 = plain CFG)."),
                io.Sigmas.Input("sigmas", optional=True,
                                tooltip="A σ schedule from a scheduler node (e.g. BasicScheduler, LTXVScheduler): "
                                        "steps + 1 values ending at 0."),
                io.Boolean.Input("compile", default=False, optional=True,
                                 tooltip="GPU: fuse the decoder blocks with torch.compile (faster steps, large masks "
                                         "gain most). The first edit of a session compiles for about a minute."),
                io.Int.Input("window_overlap", default=DEFAULT_WINDOW_OVERLAP, min=0, max=64, optional=True,
                             tooltip="With window_frames (scd): each window also re-denoises this many latent "
                                     "frames before it, held to their edit, so windows join without a seam."),
                io.Int.Input("background_refresh", default=DEFAULT_BACKGROUND_REFRESH, min=0, max=200, optional=True,
                             tooltip="training_free only: this many steps (evenly spaced) run the whole clip as "
                                     "'full' does, so the background sees the edit; the steps after them use it. "
                                     "0 = mask-local cost; each refresh costs one full step; = steps: the full "
                                     "edit. The default 2 brings the edit within 1% of full on the base oracle "
                                     "(one-way: 44% above)."),
            ],
            outputs=[EditLatents.Output(display_name="latents", tooltip="The edited latents (for EditCtrl Decode).")],
        )

    @classmethod
    def execute(cls, model: EditModel, edit_context: EditContext, positive: TextConditioning, seed: int,
                steps: int, cfg: float, shift: float, dilation: int, strength: float, window_frames: int,
                negative: TextConditioning | None = None, blend: BlendSettings | None = None,
                regions: list[Region] | None = None, compile: bool = False, mode: str = "auto",
                scheduler: str = AUTO, guidance_rescale: float = DEFAULT_RESCALE,
                sigmas: torch.Tensor | None = None, background_refresh: int = DEFAULT_BACKGROUND_REFRESH,
                window_overlap: int = DEFAULT_WINDOW_OVERLAP) -> io.NodeOutput:
        settings = SamplerSettings(steps=steps, seed=seed, cfg=cfg, shift=shift, dilation=dilation, strength=strength,
                                   blend=blend or BlendSettings(), window_frames=window_frames, compile=compile,
                                   guidance_rescale=guidance_rescale, sigmas=sigmas,
                                   background_refresh=background_refresh, window_overlap=window_overlap)

        def ready(resolved: SamplerSettings) -> None:
            vram.load(model.scd.transformer, *[m for m in (model.scd.local, model.scd.global_context) if m is not None])
            if resolved.mode == "scd" and model.scd.global_context is not None \
                    and edit_context.global_latents is None and edit_context.vae is not None:
                vram.load(edit_context.vae)  # the global adapter's low-resolution encode (once per edit context)
                edit_context.global_input()
            check_interrupt()

        result = model.edit(edit_context, positive, negative, settings, mode=mode, scheduler=scheduler,
                            regions=regions, callback=Progress(steps), ready=ready)
        notes = list(result.notes)
        if compile and model.device.type != "cuda":
            notes.insert(1, f"'compile' applies on a CUDA GPU; the model is on {model.device}, so it ran uncompiled")
        return io.NodeOutput(result, ui=notice("EditCtrl Sampler", notes))


class EditCtrlBlendSettings(io.ComfyNode):
    """How the edit meets the untouched video at the mask boundary."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditCtrlBlendSettings",
            display_name="EditCtrl Blend Settings",
            category=CATEGORY,
            description="How the edit meets the untouched video at the mask boundary (connect to the sampler).",
            inputs=[
                io.Combo.Input("mode", options=list(BLEND_MODES), default="renoised",
                               tooltip="renoised: blend against the source re-noised to each step's σ (default); "
                                       "distance: the seed's token-distance sigmoid against the clean source; "
                                       "pixel: hard latent mask, softness only from the final composite."),
                io.Float.Input("falloff_px", default=64.0, min=0.0, max=1024.0, step=1.0,
                               tooltip="renoised: width of the soft edge outside the mask, in pixels."),
                io.Float.Input("hard_fraction", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of the steps that use the hard mask before ramping to the soft one."),
                io.Int.Input("falloff_tokens", default=3, min=0, max=16, tooltip="distance mode: falloff in tokens."),
            ],
            outputs=[EditBlend.Output(display_name="blend", tooltip="For the sampler's blend input.")],
        )

    @classmethod
    def execute(cls, mode: str, falloff_px: float, hard_fraction: float, falloff_tokens: int) -> io.NodeOutput:
        return io.NodeOutput(BlendSettings(mode=mode, falloff_px=falloff_px, hard_fraction=hard_fraction,
                                           falloff_tokens=falloff_tokens))


class EditCtrlRegion(io.ComfyNode):
    """Add a region with its own prompt to a multi-region edit (chain several; connect to the sampler)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditCtrlRegion",
            display_name="EditCtrl Region Prompt",
            category=CATEGORY,
            description="Adds a region with its own prompt to a multi-region edit (chain several; connect to the "
                        "sampler's regions).",
            inputs=[
                io.Mask.Input("mask", tooltip="Region [F,H,W]; include it in the mask given to EditCtrl Encode."),
                EditConditioning.Input("conditioning", tooltip="This region's prompt."),
                EditRegions.Input("regions", optional=True, tooltip="Earlier regions (later ones win overlaps)."),
            ],
            outputs=[EditRegions.Output(display_name="regions", tooltip="For the sampler (or the next Region).")],
        )

    @classmethod
    def execute(cls, mask: torch.Tensor, conditioning: TextConditioning,
                regions: list[Region] | None = None) -> io.NodeOutput:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if not bool((mask >= 0.5).any()):
            raise ValueError("the region mask is empty; draw or select the area this prompt should edit")
        return io.NodeOutput([*(regions or []), Region(mask.float(), conditioning)])


class EditCtrlVAEDecode(io.ComfyNode):
    """Decode edited latents back to frames (the whole frame, or only the edit box for speed)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditCtrlVAEDecode",
            display_name="EditCtrl Decode",
            category=CATEGORY,
            description="Edited latents → frames at the clip's own frame count and size.",
            inputs=[
                EditVAE.Input("vae", tooltip="LTX-2's video VAE (from the model loader)."),
                EditLatents.Input("latents", tooltip="From EditCtrl Edit Sampler."),
                io.Combo.Input("region", options=["full", "edit box"], default="full",
                               tooltip="'edit box' decodes only the latent box around the edit grown by the halo "
                                       "and keeps source pixels elsewhere: much faster on long clips, approximate "
                                       "near the box edge when the halo is smaller than the VAE's reach."),
                io.Int.Input("halo_tokens", default=2, min=0, max=64,
                             tooltip="Edit box mode: latent tokens (32 px) of context decoded around the edit."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="Decoded frames (composite them into the source)."),
                     io.Mask.Output(display_name="edit_mask",
                                    tooltip="The mask the edit used: the Encode mask and every region's mask, at "
                                            "the clip's size. Wire it to EditCtrl Composite when regions reach "
                                            "beyond the main mask.")],
        )

    @classmethod
    def execute(cls, vae, latents: EditResult, region: str = "full", halo_tokens: int = 2) -> io.NodeOutput:
        check_interrupt()
        vram.load(vae)
        check_finite_tensor("latents", latents.latents, "the sampler's output is broken; re-run the edit")
        if region == "full":
            return cls._outputs(latents, latents.crop(decode_latents(vae, latents.latents)))
        if latents.source_frames is None:
            raise ValueError("edit box decoding needs latents from EditCtrl Edit Sampler; use region 'full'")
        decoded = local_decode(vae, latents.latents, latents.edit_tokens, halo_tokens)
        frames = latents.source_frames.clone()
        if decoded is not None:
            crop_frames, crop = decoded
            y0, y1, x0, x1 = crop.pixels()
            frames[:, y0:y1, x0:x1] = crop_frames.to(frames.dtype)
        return cls._outputs(latents, latents.crop(frames))

    @staticmethod
    def _outputs(latents: EditResult, frames: torch.Tensor) -> io.NodeOutput:
        """The frames and the edit's union mask at the clip's size (all zeros when the result carries none)."""
        mask = latents.mask
        return io.NodeOutput(frames, torch.zeros(frames.shape[:3]) if mask is None else mask.float().cpu())


class EditCtrlComposite(io.ComfyNode):
    """Paste the edit into the source: pixels beyond the feathered mask are the source pixels, exactly."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditCtrlComposite",
            display_name="EditCtrl Composite",
            category=CATEGORY,
            description="Pastes the edit into the source with a feathered edge: pixels beyond the feather are the "
                        "source pixels, exactly.",
            inputs=[
                io.Image.Input("edited", tooltip="From EditCtrl Decode."),
                io.Image.Input("source", tooltip="The source frames (EditCtrl Encode's images output)."),
                io.Mask.Input("mask", tooltip="The edit mask: EditCtrl Decode's edit_mask (every region included) "
                                                      "or EditCtrl Encode's mask."),
                io.Float.Input("feather_px", default=16.0, min=0.0, max=512.0, step=1.0,
                               tooltip="Soft edge width in pixels, outside the mask."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The edited clip.")],
        )

    @classmethod
    def execute(cls, edited: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
                feather_px: float) -> io.NodeOutput:
        try:  # on ComfyUI's device (the GPU when there is one); the result is a CPU IMAGE either way
            return io.NodeOutput(composite(edited, source, mask, feather_px, device=pick_device("auto")))
        except torch.cuda.OutOfMemoryError:
            log.warning("EditCtrl Composite: not enough GPU memory for the clip; compositing on the CPU")
            return io.NodeOutput(composite(edited, source, mask, feather_px, device="cpu"))


NODES = [EditCtrlVAEEncode, EditCtrlSampler, EditCtrlBlendSettings, EditCtrlRegion, EditCtrlVAEDecode,
         EditCtrlComposite]
