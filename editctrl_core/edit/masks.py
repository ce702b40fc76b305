"""Pixel masks onto LTX-2's latent token grid, and token-mask morphology."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .geometry import SPATIAL_FACTOR, TEMPORAL_FACTOR, check_frames, check_size


def pixel_mask_to_token_mask(mask: torch.Tensor, temporal: int = TEMPORAL_FACTOR,
                             spatial: int = SPATIAL_FACTOR, threshold: float = 0.5) -> torch.Tensor:
    """Map a pixel mask [F,H,W] to a boolean token mask [f,h,w] the way LTX-2's causal VAE groups pixels.

    Frame 0 maps to latent frame 0 alone; each following group of `temporal` frames maps to one latent
    frame; each `spatial`x`spatial` patch maps to one token. Max-pooling: a token is marked when any
    pixel it covers is >= threshold.
    """
    if mask.ndim != 3:
        raise ValueError(f"mask must be [frames, height, width]; got shape {tuple(mask.shape)}")
    frames, height, width = mask.shape
    check_frames(frames, temporal)
    check_size(height, width, spatial)
    hit = (mask >= threshold).float()
    first = hit[:1]
    rest = hit[1:]
    if rest.shape[0]:
        rest = rest.reshape(-1, temporal, height, width).amax(dim=1)
        grouped = torch.cat([first, rest], dim=0)
    else:
        grouped = first
    pooled = F.max_pool2d(grouped.unsqueeze(1), kernel_size=spatial, stride=spatial).squeeze(1)
    return pooled > 0


def dilate_token_mask(token_mask: torch.Tensor, spatial: int = 1, temporal: int = 0) -> torch.Tensor:
    """Grow a boolean token mask [f,h,w] by `spatial` tokens in h/w and `temporal` latent frames."""
    if spatial < 0 or temporal < 0:
        raise ValueError("dilation must be >= 0")
    if spatial == 0 and temporal == 0:
        return token_mask.bool().clone()
    x = token_mask.float()[None, None]
    kernel = (2 * temporal + 1, 2 * spatial + 1, 2 * spatial + 1)
    x = F.max_pool3d(x, kernel_size=kernel, stride=1, padding=(temporal, spatial, spatial))
    return x[0, 0] > 0


def token_mask_to_pixel_mask(token_mask: torch.Tensor, pixel_frames: int, temporal: int = TEMPORAL_FACTOR,
                             spatial: int = SPATIAL_FACTOR) -> torch.Tensor:
    """Inverse mapping of `pixel_mask_to_token_mask` (nearest): token mask [f,h,w] → float pixel mask [F,H,W]."""
    f, h, w = token_mask.shape
    up = token_mask.float().repeat_interleave(spatial, 1).repeat_interleave(spatial, 2)
    index = torch.clamp((torch.arange(pixel_frames, device=up.device) + temporal - 1) // temporal, max=f - 1)
    return up[index]
