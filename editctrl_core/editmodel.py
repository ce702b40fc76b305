"""EditModel: an SCD-split LTX-2 transformer with the preset it was built from, as passed between nodes."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .lora import LoraFile, apply_loras
from .models import Preset
from .scd import SCDModel


@dataclass
class EditModel:
    """The SCD model, its preset, where its weights came from, and attached adapters/LoRAs (by name)."""

    scd: SCDModel
    preset: Preset
    source: str
    attachments: list[str] = field(default_factory=list)
    loras: list[tuple[LoraFile, float]] = field(default_factory=list)

    def with_lora(self, lora: LoraFile, strength: float) -> EditModel:
        """A copy that also applies `lora` at `strength` while sampling (the shared base model is never changed)."""
        name = f"LoRA {Path(lora.path).name if lora.path else 'in-memory'} x{strength:g}"
        return replace(self, loras=[*self.loras, (lora, strength)], attachments=[*self.attachments, name])

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
