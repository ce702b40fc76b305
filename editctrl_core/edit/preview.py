"""Mask overlay previews (the seed's red debug column)."""

from __future__ import annotations

import torch

RED = (1.0, 0.0, 0.0)


def mask_overlay(frames: torch.Tensor, mask: torch.Tensor, opacity: float = 0.5,
                 color: tuple[float, float, float] = RED) -> torch.Tensor:
    """Tint masked pixels of IMAGE frames [F,H,W,3] with `color` at `opacity`; mask [F,H,W] (or [1,H,W])."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1]; got {opacity}")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.shape[0] == 1:
        mask = mask.expand(frames.shape[0], -1, -1)
    if tuple(mask.shape) != tuple(frames.shape[:3]):
        raise ValueError(f"mask {tuple(mask.shape)} does not match frames {tuple(frames.shape[:3])}")
    tint = torch.tensor(color, dtype=frames.dtype, device=frames.device)
    alpha = (mask.to(frames.dtype).clamp(0, 1) * opacity).unsqueeze(-1)
    return frames * (1 - alpha) + tint * alpha
