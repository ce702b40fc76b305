"""EditModel: an SCD-split LTX-2 transformer with the preset it was built from, as passed between nodes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .models import Preset
from .scd import SCDModel


@dataclass
class EditModel:
    """The SCD model, its preset, where its weights came from, and attached adapters/LoRAs (by name)."""

    scd: SCDModel
    preset: Preset
    source: str
    attachments: list[str] = field(default_factory=list)

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
