"""Frame sheets of the recipes' edits: frames [H,W,3] in 0..1 laid out in rows and columns, saved as one PNG.

The oracle sheets (scripts/oracle_sheet.py) and the small-edit recipe's before/after sheets use these, so every
picture in docs/ is made the same way from an edit's frames.
"""

from __future__ import annotations

from pathlib import Path

import torch

RED = (1.0, 0.1, 0.1)


def mask_overlay(frame: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The frame with the masked pixels tinted red (half and half)."""
    return torch.where(mask[..., None] > 0.5, 0.5 * frame + 0.5 * torch.tensor(RED), frame)


def grid(rows: list[list[torch.Tensor]], pad: int = 2) -> torch.Tensor:
    """Images of one size [H,W,3] as a grid on a white background, `pad` pixels apart."""
    h, w = rows[0][0].shape[:2]
    out = torch.ones(len(rows) * (h + pad) + pad, max(len(r) for r in rows) * (w + pad) + pad, 3)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[y:y + h, x:x + w] = image
    return out


def save_image(image: torch.Tensor, path: Path) -> Path:
    """Write an image [H,W,3] in 0..1 as 8 bits, format from the suffix: optimised PNG, or WebP at quality 90 for
    photographic sheets (a third of the PNG's size); folders created."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    options = {"quality": 90, "method": 6} if path.suffix.lower() == ".webp" else {"optimize": True}
    Image.fromarray(pixels).save(path, **options)
    return path
