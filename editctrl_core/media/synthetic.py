"""Synthetic clips: a moving shape over a textured background, with the true background and the object mask.

Used by the demo, the tests and the training recipe: they give exact ground truth for "remove the object".
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..loading.weights_file import atomic_write


@dataclass
class SyntheticClip:
    """Frames with the object, the same frames without it, and the object's pixel mask."""

    frames: torch.Tensor
    background: torch.Tensor
    mask: torch.Tensor


def textured_background(frames: int, height: int, width: int, gen: torch.Generator,
                        drift: float = 0.5, cycles: tuple[float, float] = (1.0, 7.0)) -> torch.Tensor:
    """Smooth coloured stripes and blobs that drift slowly, so the background has motion and texture; `cycles` is
    the range of each stripe pattern's periods across the frame (low values: backgrounds smooth at token scale)."""
    y = torch.linspace(0, 1, height).view(1, height, 1)
    x = torch.linspace(0, 1, width).view(1, 1, width)
    t = torch.arange(frames, dtype=torch.float32).view(frames, 1, 1)
    params = torch.rand(3, 4, generator=gen)
    channels = []
    for c in range(3):
        span = cycles[1] - cycles[0]
        fx, fy, phase, amp = (params[c] * torch.tensor([span, span, 6.28, 0.25])
                              + torch.tensor([cycles[0], cycles[0], 0.0, 0.15]))
        wave = torch.sin(2 * math.pi * (fx * x + fy * y) + phase + drift * 0.05 * t)
        channels.append(0.5 + amp * wave + 0.1 * torch.cos(2 * math.pi * (x * 2 - y)))
    return torch.stack(channels, dim=-1).clamp(0, 1)


def make_clip(frames: int = 17, height: int = 64, width: int = 96, seed: int = 0,
              shape: str = "disc", radius_frac: float = 0.18, cycles: tuple[float, float] = (1.0, 7.0)
              ) -> SyntheticClip:
    """A clip with one moving disc/square over a drifting textured background (see `textured_background`)."""
    gen = torch.Generator().manual_seed(seed)
    background = textured_background(frames, height, width, gen, cycles=cycles)
    color = torch.rand(3, generator=gen) * 0.6 + 0.2
    start = torch.rand(2, generator=gen) * 0.4 + 0.3
    velocity = (torch.rand(2, generator=gen) - 0.5) * 0.02
    yy = torch.arange(height, dtype=torch.float32).view(height, 1)
    xx = torch.arange(width, dtype=torch.float32).view(1, width)
    radius = radius_frac * min(height, width)
    masks = []
    for f in range(frames):
        cy = (start[0] + velocity[0] * f) * height
        cx = (start[1] + velocity[1] * f) * width
        if shape == "disc":
            m = ((yy - cy) ** 2 + (xx - cx) ** 2) <= radius ** 2
        else:
            m = ((yy - cy).abs() <= radius) & ((xx - cx).abs() <= radius)
        masks.append(m)
    mask = torch.stack(masks).float()
    clip = torch.where(mask.unsqueeze(-1) > 0, color.view(1, 1, 1, 3).expand_as(background), background)
    return SyntheticClip(clip, background, mask)


def write_demo_clip(path: str | os.PathLike[str], frames: int = 25, height: int = 128, width: int = 192,
                    seed: int = 3, fps: float = 24.0) -> Path:
    """The demo clip (a disc moving over a drifting texture, 1 s of a 440 Hz tone per 24 frames) as an mp4 at `path`,
    written to a temporary name first so a half-written clip never appears."""
    from .video_io import write_video

    path = Path(path)
    clip = make_clip(frames, height, width, seed=seed)
    rate = 44100
    t = np.arange(int(rate * frames / fps)) / rate
    tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return atomic_write(path, lambda tmp: write_video(tmp, clip.frames, fps=fps, audio=(np.stack([tone, tone]), rate)),
                        suffix=path.suffix)
