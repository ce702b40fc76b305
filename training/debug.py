"""Debug images of a training step: source, masked input, prediction, target and the red mask-overlay column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from editctrl_core.edit.masks import token_mask_to_pixel_mask
from editctrl_core.edit.preview import mask_overlay
from editctrl_core.loading.weights_file import atomic_write
from editctrl_core.media.vae import decode_latents

COLUMNS = ("source", "masked input", "prediction", "target", "mask overlay")


def debug_grid(vae: torch.nn.Module, debug: dict, rows: int = 3) -> torch.Tensor:
    """Image [rows·H, 5·W, 3] in 0..1: one row per chosen frame, columns as in COLUMNS."""
    decoded = {k: decode_latents(vae, debug[k]) for k in ("source", "background", "prediction", "target")}
    frames = decoded["source"].shape[0]
    mask = token_mask_to_pixel_mask(debug["mask"], frames)
    overlay = mask_overlay(decoded["source"], mask)
    picks = sorted({round(i * (frames - 1) / max(rows - 1, 1)) for i in range(rows)})
    cols = [decoded["source"], decoded["background"], decoded["prediction"], decoded["target"], overlay]
    rows_img = [torch.cat([c[i] for c in cols], dim=1) for i in picks]
    return torch.cat(rows_img, dim=0).clamp(0, 1)


def save_debug_png(vae: torch.nn.Module, debug: dict, path: Path) -> Path:
    """Write the debug grid as a PNG (atomic rename)."""
    image = debug_grid(vae, debug)
    array = (image.numpy() * 255).round().astype(np.uint8)
    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp), suffix=".png")
