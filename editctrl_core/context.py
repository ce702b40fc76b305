"""The edit context: source and background latents plus pixel/token masks, built once per edit."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLLTX2Video

from .geometry import GeometryError, LatentGrid, grid_for, snap_shape
from .masks import pixel_mask_to_token_mask
from .vae import encode_frames

BACKGROUND_FILL = 0.5
_FILL_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class EditContext:
    """Everything the sampler and the compositor need about one clip and its edit mask."""

    frames: torch.Tensor
    mask: torch.Tensor
    source_latents: torch.Tensor
    background_latents: torch.Tensor
    token_mask: torch.Tensor
    grid: LatentGrid
    snap_note: str = ""

    @property
    def mask_fraction(self) -> float:
        return float(self.token_mask.float().mean())


def to_tokens(latents: torch.Tensor) -> torch.Tensor:
    """Latents [B,C,f,h,w] → tokens [B,f*h*w,C] in the transformer's (frame, row, column) order."""
    b, c = latents.shape[:2]
    return latents.permute(0, 2, 3, 4, 1).reshape(b, -1, c)


def from_tokens(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Tokens [B,N,C] → latents [B,C,f,h,w]."""
    b, _, c = tokens.shape
    f, h, w = grid
    return tokens.reshape(b, f, h, w, c).permute(0, 4, 1, 2, 3)


def conform(frames: torch.Tensor, mask: torch.Tensor, snap: bool) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Check frames [F,H,W,3] and mask [F,H,W] agree; trim/centre-crop to a valid LTX-2 shape if `snap`."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise GeometryError(f"frames must be an IMAGE batch [frames, height, width, 3]; got {tuple(frames.shape)}")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0).expand(frames.shape[0], -1, -1)
    if mask.ndim != 3:
        raise GeometryError(f"mask must be a MASK [frames, height, width]; got {tuple(mask.shape)}")
    if mask.shape[0] == 1 and frames.shape[0] > 1:
        mask = mask.expand(frames.shape[0], -1, -1)
    if tuple(mask.shape) != tuple(frames.shape[:3]):
        raise GeometryError(
            f"mask {tuple(mask.shape)} does not match the video {tuple(frames.shape[:3])} (frames, height, width); "
            "resize the mask to the video or give one mask per frame"
        )
    f, h, w = frames.shape[:3]
    if not snap:
        grid_for(f, h, w)
        return frames, mask, ""
    nf, nh, nw = snap_shape(f, h, w)
    if (nf, nh, nw) == (f, h, w):
        return frames, mask, ""
    top, left = (h - nh) // 2, (w - nw) // 2
    note = (f"snapped {f} frames at {h}x{w} to {nf} frames at {nh}x{nw} "
            f"(kept the first {nf} frames, centre crop at top={top}, left={left})")
    return (frames[:nf, top:top + nh, left:left + nw], mask[:nf, top:top + nh, left:left + nw], note)


def fill_latents(vae: AutoencoderKLLTX2Video, shape: tuple[int, int, int]) -> torch.Tensor:
    """Latents [1,C,f,h,w] of an all-grey clip of `shape` (frames, height, width): what an edit region is blanked
    to, in training and at inference alike. Encoded once per VAE and shape, then reused."""
    per_vae = _FILL_CACHE.setdefault(vae, {})
    if shape not in per_vae:
        per_vae[shape] = encode_frames(vae, torch.full((*shape, 3), BACKGROUND_FILL)).cpu()
    return per_vae[shape]


def blank_background(source: torch.Tensor, token_mask: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Source latents [B,C,f,h,w] with the tokens of `token_mask` [f,h,w] replaced by the grey-clip latents."""
    return torch.where(token_mask.to(source.device)[None, None], fill.to(source), source)


def prepare_edit(vae: AutoencoderKLLTX2Video, frames: torch.Tensor, mask: torch.Tensor,
                 snap: bool = False) -> EditContext:
    """VAE-encode the source clip once, map the mask to tokens and blank those tokens to the grey-clip latents
    (the background the SCD encoder and the adapters see, exactly as in training)."""
    frames, mask, note = conform(frames.float(), mask.float(), snap)
    grid = grid_for(frames.shape[0], frames.shape[1], frames.shape[2])
    source = encode_frames(vae, frames).cpu()
    token_mask = pixel_mask_to_token_mask(mask)
    if bool(token_mask.any()):
        background = blank_background(source, token_mask, fill_latents(vae, tuple(frames.shape[:3])))
    else:
        background = source.clone()
    return EditContext(frames, mask, source, background, token_mask, grid, note)
