"""Bridges between ComfyUI's native LTX-2 types (LATENT, CONDITIONING, MODEL) and the pack's own, so native nodes
(VAE Encode/Decode, LTXV latent nodes, the LTX-2 text encoder, UNETLoader + LoraLoaderModelOnly, native samplers)
and the EditCtrl sampler compose in one graph. Thin: every conversion is in `editctrl_core.loading.native`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..editctrl_core.conditioning.text import TextConditioning
from ..editctrl_core.edit.context import EditContext
from ..editctrl_core.edit.sampler import EditResult
from ..editctrl_core.edit.scd import PREFIX_MODES, SCDModel, SCDOptions, default_split_layer
from ..editctrl_core.editmodel import EditModel
from ..editctrl_core.loading.lora import native_to_diffusers
from ..editctrl_core.loading.models import ModelLoadError, detect_preset, load_preset
from ..editctrl_core.loading.native import (
    NativeFormatError,
    bind_parameters,
    diffusers_transformer_config,
    diffusers_view,
    edit_context_from_latents,
    latent_grid,
    native_context_from_text,
    native_latents,
    our_latents,
    text_conditioning_from_native,
    token_mask_from_noise_mask,
)
from . import vram
from .common import CATEGORY, EditConditioning, EditContextType, EditLatents, EditModelType, EditVAE, notice

log = logging.getLogger("editctrl")
NATIVE_CATEGORY = f"{CATEGORY}/native"


def _scaling(vae: Any) -> float:
    """Our VAE's latent scaling factor (LTX-2's is 1.0, also assumed without a VAE)."""
    return 1.0 if vae is None else float(vae.config.scaling_factor)


class EditCtrlConditioningFromNative(io.ComfyNode):
    """A native CONDITIONING from ComfyUI's LTX-2 text encoder → EditCtrl conditioning."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditCtrlConditioningFromNative",
            display_name="EditCtrl Conditioning From Native",
            category=NATIVE_CATEGORY,
            description="ComfyUI's LTX-2 CONDITIONING (LTXAVTextEncoderLoader + CLIPTextEncode: Gemma, feature "
                        "projection and both connectors already ran; video and audio embeddings side by side) → "
                        "EditCtrl conditioning for the edit sampler.",
            inputs=[io.Conditioning.Input("conditioning", tooltip="From CLIPTextEncode with an LTX-2 text encoder "
                                                                  "(the first entry is used).")],
            outputs=[EditConditioning.Output(display_name="conditioning",
                                             tooltip="For the EditCtrl sampler's positive/negative.")],
        )

    @classmethod
    def execute(cls, conditioning: list) -> io.NodeOutput:
        if not conditioning:
            raise ValueError("the CONDITIONING is empty")
        tensor, extra = conditioning[0][0], dict(conditioning[0][1] or {})
        try:
            cond = text_conditioning_from_native(tensor, extra.get("attention_mask"))
        except NativeFormatError as exc:
            raise ValueError(f"EditCtrl Conditioning From Native: {exc}") from exc
        notes = [f"{len(conditioning)} entries: only the first is used"] if len(conditioning) > 1 else []
        return io.NodeOutput(cond, ui=notice("EditCtrl Conditioning From Native", notes))


class EditCtrlConditioningToNative(io.ComfyNode):
    """EditCtrl conditioning → a native CONDITIONING for ComfyUI's LTX-2 model (native samplers)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditCtrlConditioningToNative",
            display_name="EditCtrl Conditioning To Native",
            category=NATIVE_CATEGORY,
            description="EditCtrl conditioning → CONDITIONING for ComfyUI's native LTX-2 model (video and audio "
                        "embeddings side by side, the padding mask as attention_mask).",
            inputs=[EditConditioning.Input("conditioning", tooltip="From an EditCtrl text encode node.")],
            outputs=[io.Conditioning.Output(display_name="conditioning", tooltip="For native samplers.")],
        )

    @classmethod
    def execute(cls, conditioning: TextConditioning) -> io.NodeOutput:
        context, mask = native_context_from_text(conditioning)
        extra: dict[str, Any] = {"pooled_output": None}
        if mask is not None:
            extra["attention_mask"] = mask
        return io.NodeOutput([[context, extra]])


class EditCtrlEditToLatent(io.ComfyNode):
    """The edit result as a native LATENT (for native VAE Decode or a native sampler)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditCtrlEditToLatent",
            display_name="EditCtrl Edit To Latent",
            category=NATIVE_CATEGORY,
            description="Edited latents → a native LATENT in ComfyUI's LTX-2 normalisation, on the model's grid "
                        "(padded clips stay padded: native VAE Decode gives the padded frames).",
            inputs=[
                EditLatents.Input("latents", tooltip="From EditCtrl Edit Sampler."),
                io.Boolean.Input("noise_mask", default=True,
                                 tooltip="Attach the edited (dilated) tokens as the LATENT's noise_mask, so a native "
                                         "sampler refines only the edit region."),
                EditVAE.Input("vae", optional=True,
                              tooltip="Our VAE, for its latent scaling factor (unconnected: 1.0, LTX-2's)."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="For VAE Decode or a native sampler.")],
        )

    @classmethod
    def execute(cls, latents: EditResult, noise_mask: bool = True, vae: Any = None) -> io.NodeOutput:
        out: dict[str, Any] = {"samples": native_latents(latents.latents, _scaling(vae))}
        if noise_mask:
            out["noise_mask"] = latents.edit_tokens.float()[None, None].cpu()
        return io.NodeOutput(out)


class EditCtrlContextToLatent(io.ComfyNode):
    """The edit context's source latents as a native LATENT, the edit region as its noise_mask."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditCtrlContextToLatent",
            display_name="EditCtrl Context To Latent",
            category=NATIVE_CATEGORY,
            description="The edit context → a native LATENT: the source latents in ComfyUI's LTX-2 normalisation and "
                        "the edit region (token grid) as noise_mask, e.g. for a native sampler's inpainting.",
            inputs=[
                EditContextType.Input("edit_context", tooltip="From EditCtrl Encode Video + Mask."),
                EditVAE.Input("vae", optional=True,
                              tooltip="Our VAE, for its latent scaling factor (unconnected: 1.0, LTX-2's)."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="Source latents with the edit noise_mask.")],
        )

    @classmethod
    def execute(cls, edit_context: EditContext, vae: Any = None) -> io.NodeOutput:
        return io.NodeOutput({"samples": native_latents(edit_context.source_latents, _scaling(vae)),
                              "noise_mask": edit_context.token_mask.float()[None, None].cpu()})


class EditCtrlLatentToEdit(io.ComfyNode):
    """A native LATENT → edited latents for EditCtrl Decode."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditCtrlLatentToEdit",
            display_name="EditCtrl Latent To Edit",
            category=NATIVE_CATEGORY,
            description="A native LTX-2 LATENT (e.g. from a native sampler) → latents EditCtrl Decode takes.",
            inputs=[
                io.Latent.Input("latent", tooltip="A video LATENT for this LTX-2 model."),
                EditVAE.Input("vae", optional=True,
                              tooltip="Our VAE, for its latent scaling factor (unconnected: 1.0, LTX-2's)."),
            ],
            outputs=[EditLatents.Output(display_name="latents", tooltip="For EditCtrl Decode.")],
        )

    @classmethod
    def execute(cls, latent: dict, vae: Any = None) -> io.NodeOutput:
        try:
            z = our_latents(latent["samples"], _scaling(vae))[:1]
            grid = latent_grid(z)
            mask = latent.get("noise_mask")
            tokens = (token_mask_from_noise_mask(mask, grid, threshold=1e-6) if mask is not None
                      else torch.ones(grid.shape, dtype=torch.bool))
        except NativeFormatError as exc:
            raise ValueError(f"EditCtrl Latent To Edit: {exc}") from exc
        return io.NodeOutput(EditResult(z, tokens, 0, 0, mode="native"))


class EditCtrlContextFromLatent(io.ComfyNode):
    """A native LATENT (+ its noise_mask) → an EditCtrl edit context."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditCtrlContextFromLatent",
            display_name="EditCtrl Context From Latent",
            category=NATIVE_CATEGORY,
            description="A native LTX-2 LATENT (e.g. VAE Encode + Set Latent Noise Mask, or LTXV latent nodes) → "
                        "the edit context: its samples are the source latents, its noise_mask (or the mask input) "
                        "the edit region on the token grid.",
            inputs=[
                io.Latent.Input("latent", tooltip="Video latents of the source clip (batch 1)."),
                EditVAE.Input("vae", tooltip="Our VAE (the edit region is blanked to its grey-clip latents, as in "
                                             "training; also its latent scaling factor)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Edit region [F,H,W] at the clip's pixels; unconnected: the LATENT's "
                                      "noise_mask."),
                io.Image.Input("images", optional=True,
                               tooltip="The source frames (for edit-box decoding and Composite); the clip's own size "
                                       "or the latents' padded one."),
            ],
            outputs=[EditContextType.Output(display_name="edit_context", tooltip="For the EditCtrl sampler."),
                     io.Mask.Output(display_name="mask", tooltip="The edit mask at the clip's pixels (for Composite).")],
        )

    @classmethod
    def execute(cls, latent: dict, vae: Any, mask: torch.Tensor | None = None,
                images: torch.Tensor | None = None) -> io.NodeOutput:
        region = mask if mask is not None else latent.get("noise_mask")
        if region is None:
            raise ValueError("EditCtrl Context From Latent: the LATENT has no noise_mask and no mask is connected: "
                             "say what to edit (Set Latent Noise Mask, or the mask input)")
        vram.load(vae)
        try:
            ctx = edit_context_from_latents(vae, latent["samples"], region, images)
        except NativeFormatError as exc:
            raise ValueError(f"EditCtrl Context From Latent: {exc}") from exc
        return io.NodeOutput(ctx, ctx.crop(ctx.mask), ui=notice("EditCtrl Context From Latent", ctx.notes))


@dataclass
class NativeEditModel(EditModel):
    """An EditModel whose transformer shares its parameters with a native ComfyUI MODEL (no second copy).

    Loading goes through the native model's own patcher (so its LoRAs are applied and ComfyUI accounts the memory
    once); right before sampling (`lora_patch`, which the sampler enters after loading) the diffusers view is
    re-pointed at the native parameters, because ComfyUI replaces Parameter objects when it (un)patches LoRAs."""

    native: Any = None

    def lora_patch(self):
        bind_parameters(self.scd.transformer, self.native.model.diffusion_model)
        return super().lora_patch()


def _native_config(patcher: Any) -> tuple[Any, dict[str, Any]]:
    """(preset, diffusers config) of a native LTX-2 MODEL: the preset detected from its weights' names and shapes,
    its config overridden by what ComfyUI built the model with (the checkpoint's ``config`` metadata)."""
    unet_config = dict(getattr(patcher.model.model_config, "unet_config", {}) or {})
    if unet_config.get("image_model") != "ltxav":
        raise ValueError(f"the MODEL is not ComfyUI's native LTX-2 (image_model {unet_config.get('image_model')!r}); "
                         "connect a model from UNETLoader / Load Checkpoint with an LTX-2 file")
    diffusion = patcher.model.diffusion_model
    shapes = {native_to_diffusers(k): (tuple(p.shape), str(p.dtype)) for k, p in diffusion.named_parameters()}
    preset = load_preset(detect_preset(shapes))
    config = diffusers_transformer_config(unet_config, base=preset.transformer)
    return preset, config


class EditCtrlModelFromNative(io.ComfyNode):
    """A native LTX-2 MODEL (UNETLoader, LoRAs applied) → the EditCtrl model, sharing its weights."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditCtrlModelFromNative",
            display_name="EditCtrl Model From Native",
            category=NATIVE_CATEGORY,
            description="Runs the EditCtrl sampler on the weights of a native LTX-2 MODEL (UNETLoader, Load "
                        "Checkpoint, LoraLoaderModelOnly...): the diffusers transformer points at the very same "
                        "tensors, so no second copy is loaded; native LoRAs apply. Needs float32/bf16/fp16 weights.",
            inputs=[
                io.Model.Input("model", tooltip="ComfyUI's native LTX-2 (audio-video) model."),
                io.Int.Input("split_layer", default=0, min=0, max=256,
                             tooltip="SCD split layer k (encoder = blocks [0,k)). 0 = the default (32 of 48)."),
                io.Combo.Input("scd_prefix", options=list(PREFIX_MODES), default="one_way", optional=True,
                               tooltip="How the decoder sees the encoder context (see EditCtrl Load LTX-2)."),
            ],
            outputs=[EditModelType.Output(display_name="model", tooltip="For the EditCtrl sampler and LoRA nodes.")],
        )

    @classmethod
    def execute(cls, model: Any, split_layer: int, scd_prefix: str = "one_way") -> io.NodeOutput:
        try:
            preset, config = _native_config(model)
            mm.load_models_gpu([model], force_full_load=True)
            view = diffusers_view(model.model.diffusion_model, config)
        except (NativeFormatError, ModelLoadError) as exc:
            raise ValueError(f"EditCtrl Model From Native: {exc}") from exc
        object.__setattr__(view, vram._ATTR, model)  # vram.load(view) loads the native model itself
        preset.transformer = config
        layers = config["num_layers"]
        k = split_layer or (preset.split_layer if preset.split_layer < layers else default_split_layer(layers))
        if not 0 < k < layers:
            raise ValueError(f"split_layer must be between 1 and {layers - 1} for this {layers}-block model; got {k}")
        scd = SCDModel(view, SCDOptions(split_layer=k, prefix=scd_prefix))
        edit = NativeEditModel(scd, preset, "native MODEL (shared weights)", native=model)
        log.info("EditCtrl: %s", edit.describe())
        return io.NodeOutput(edit)


NODES = [EditCtrlConditioningFromNative, EditCtrlConditioningToNative, EditCtrlEditToLatent, EditCtrlContextToLatent,
         EditCtrlLatentToEdit, EditCtrlContextFromLatent, EditCtrlModelFromNative]
