"""EditModel: an SCD-split LTX-2 transformer with the preset it was built from, as passed between nodes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .conditioning.text import TextConditioning
from .conditioning.text_encoders import check_text_width
from .edit.context import EditContext
from .edit.fast_decode import warm_encoder_kernels
from .edit.prefix_attention import warm_attention_kernels
from .edit.sampler import EditResult, Region, SamplerSettings, StepCallback, edit_sigmas, sample_edit
from .edit.scd import SCDModel
from .edit.schedules import AUTO, describe_sigmas, resolve_scheduler
from .loading.lora import LoraFile, apply_loras
from .loading.models import Preset, source_metadata
from .loading.scd_metadata import options_from_metadata

log = logging.getLogger("editctrl")
EDIT_MODES = ("auto", "scd", "training_free", "full")
SCD_LORA_KEYS = ("scd_prefix", "split_layer")


@dataclass
class EditModel:
    """The SCD model, its preset, where its weights came from, and attached adapters/LoRAs (by name)."""

    scd: SCDModel
    preset: Preset
    source: str
    attachments: list[str] = field(default_factory=list)
    loras: list[tuple[LoraFile, float]] = field(default_factory=list)

    def with_lora(self, lora: LoraFile, strength: float) -> EditModel:
        """A copy that also applies `lora` at `strength` while sampling (the shared base model is never changed).

        A LoRA trained by our trainer records the SCD options it learned (prefix mode, next-frame shift, encoder
        attention; see `scd.options_from_metadata`); the copy uses them.
        """
        name = f"LoRA {Path(lora.path).name if lora.path else 'in-memory'} x{strength:g}"
        scd = self.scd
        changes = {k: v for k, v in options_from_metadata(lora.metadata).items() if getattr(scd.options, k) != v}
        if changes:
            log.info("EditCtrl: %s was trained with SCD options %s; using them", name, changes)
            scd = scd.variant(**changes)
        return replace(self, scd=scd, loras=[*self.loras, (lora, strength)], attachments=[*self.attachments, name])

    @property
    def scd_parts(self) -> list[str]:
        """What makes this model an SCD edit model: SCD LoRAs (their metadata says so) and EditCtrl adapters."""
        parts = [f"SCD LoRA {Path(lora.path).name if lora.path else 'in-memory'}" for lora, _ in self.loras
                 if any(key in lora.metadata for key in SCD_LORA_KEYS)]
        parts += [name for name, module in (("the local context adapter", self.scd.local),
                                            ("the global context adapter", self.scd.global_context))
                  if module is not None]
        return parts

    def resolve_mode(self, requested: str) -> tuple[str, str]:
        """(mode that runs, why): `auto` is `scd` when SCD weights are loaded, else `training_free`; a mode that
        cannot run with what is loaded raises, naming the piece and what to do."""
        if requested not in EDIT_MODES:
            raise ValueError(f"mode must be one of {', '.join(EDIT_MODES)}; got {requested!r}")
        parts = self.scd_parts
        if requested == "auto":
            if parts:
                return "scd", f"auto chose scd: {', '.join(parts)} loaded"
            return "training_free", ("auto chose training_free: no SCD LoRA or EditCtrl adapters loaded, so the "
                                     "pretrained model edits the masked tokens with the clean background as context")
        if requested == "scd":
            if parts:
                return "scd", f"scd as chosen ({', '.join(parts)} loaded)"
            return "scd", ("scd as chosen, but no SCD LoRA or adapters are loaded: the split decoder only edits well "
                           "with weights trained for it (choose auto or training_free for the official checkpoints)")
        adapters = [p for p in parts if "adapter" in p]
        loras = [p for p in parts if "adapter" not in p]
        if adapters:
            raise ValueError(f"mode {requested} cannot use {' and '.join(adapters)}: EditCtrl adapters work with the "
                             "SCD split only. Choose mode scd (or auto), or remove EditCtrl Load Adapters")
        if loras:
            raise ValueError(f"mode {requested} cannot use {', '.join(loras)}: it was trained for the SCD split "
                             "decoder. Choose mode scd (or auto), or remove that LoRA (ordinary LoRAs such as "
                             "IC-LoRAs work in every mode)")
        return requested, f"{requested} as chosen"

    def check_inputs(self, ctx: EditContext, conditionings: dict[str, TextConditioning | None]) -> None:
        """Refuse an edit context or prompts that do not fit this model, naming the input and what to do: latent
        channels, and per layout the prompt width (caption_channels on 2.0; the transformer width on 2.3/2.5) and the
        audio prompt width."""
        config = self.scd.transformer.config
        channels = config["in_channels"]
        if ctx.source_latents.shape[1] != channels:
            raise ValueError(f"edit context has {ctx.source_latents.shape[1]} latent channels but the model takes "
                             f"{channels}; encode with this model's VAE")
        audio_width = config["audio_cross_attention_dim"]
        for name, cond in conditionings.items():
            if cond is None:
                continue
            try:
                check_text_width(cond, config)
            except ValueError as exc:
                raise ValueError(f"{name} conditioning: {exc}") from exc
            audio = cond.audio_embeds
            if audio is not None and not config["use_prompt_embeddings"] and audio.shape[-1] != audio_width:
                raise ValueError(f"{name} conditioning: the audio prompt embeddings are {audio.shape[-1]} wide but "
                                 f"the model expects {audio_width}: load the text encoder of the same LTX-2 version")

    def edit(self, ctx: EditContext, positive: TextConditioning, negative: TextConditioning | None,
             settings: SamplerSettings, *, mode: str = "auto", scheduler: str = AUTO,
             regions: list[Region] | None = None, callback: StepCallback | None = None,
             ready: Callable[[SamplerSettings], None] | None = None) -> EditResult:
        """One edit, as the Edit Sampler node, the oracle recipe and scripts run it: `mode` and `scheduler` resolved
        from what is loaded, the inputs checked against this model, `settings` validated (their own mode and
        scheduler are replaced; `compile` only applies on CUDA), then `ready(settings)` (e.g. moving weights to the
        GPU: nothing is loaded for an edit that is refused), once per process the attention libraries' start-up and the
        model's CUDA kernels (:func:`~editctrl_core.edit.prefix_attention.warm_attention_kernels`,
        :func:`~editctrl_core.edit.fast_decode.warm_encoder_kernels`), and the sampler with the LoRA stack
        active.
        ``result.notes`` says which mode and σ ran and why, how many tokens were edited, and anything else to know."""
        chosen, why = self.resolve_mode(mode)
        schedule, schedule_why = resolve_scheduler(scheduler, source_metadata(self.source), self.source,
                                                   settings.sigmas is not None)
        self.check_inputs(ctx, {"positive": positive, "negative": negative,
                                **{f"region {i + 1}": r.prompt for i, r in enumerate(regions or [])}})
        on_cuda = self.device.type == "cuda"
        settings = replace(settings, mode=chosen, scheduler=schedule, compile=settings.compile if on_cuda else False)
        try:
            settings.validate()
        except ValueError as exc:
            if scheduler == AUTO and schedule == "distilled" and settings.sigmas is None:
                raise ValueError(f"{exc}, or choose scheduler ltx2 ({schedule_why})") from exc
            raise
        notes = [f"mode {chosen}: {why}"]
        if ready is not None:
            ready(settings)
        warmed = warm_attention_kernels(self.device, self.dtype)
        if settings.fast:
            warmed += warm_encoder_kernels(self.scd, positive)
        if warmed:
            notes.append(f"CUDA kernels loaded for this process on {self.device} ({warmed:.2f} s, once)")
        if settings.compile:
            log.info("EditCtrl: decoder blocks run through torch.compile (compiled once per session)")
        with self.lora_patch():
            result = sample_edit(self.scd, ctx, positive, negative, settings, callback=callback, regions=regions)
        notes.extend(result.notes)
        edited = int(result.edit_tokens.sum())
        if edited == 0:
            notes.append("the edit mask is empty after all processing, so the source came back unchanged and the "
                         "model never ran; draw or select the region to edit")
        else:
            encoder = f" and {result.encoder_calls} encoder pass(es)" if result.encoder_calls else ""
            notes.append(f"{schedule_why}: {describe_sigmas(edit_sigmas(settings, ctx.grid.num_tokens))}")
            notes.append(f"edited {edited} of {result.edit_tokens.numel()} tokens "
                         f"({100 * edited / result.edit_tokens.numel():.1f}%): {result.decoder_calls} denoising "
                         f"passes{encoder}")
        result.notes = notes
        return result

    def lora_patch(self) -> contextlib.AbstractContextManager:
        """Context in which the LoRA stack is active on the transformer (hooks removed on exit, bit-exact)."""
        if not self.loras:
            return contextlib.nullcontext()
        return apply_loras(self.scd.transformer, self.loras)

    @property
    def device(self) -> torch.device:
        return self.scd.stack.device

    @property
    def dtype(self) -> torch.dtype:
        return self.scd.stack.dtype

    def describe(self) -> str:
        """One line for logs and UI: preset, split layer, weights source and attachments."""
        extra = f", with {', '.join(self.attachments)}" if self.attachments else ""
        return (f"{self.preset.name} ({self.scd.stack.num_layers} blocks, split at {self.scd.split_layer}) "
                f"from {self.source} on {self.device}/{str(self.dtype).replace('torch.', '')}{extra}")
