"""The edit context: source and background latents plus pixel/token masks, built once per edit."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace

import torch
from diffusers import AutoencoderKLLTX2Video

from .checks import check_finite_tensor, check_finite_value
from .geometry import GeometryError, LatentGrid, Padding, check_geometry, grid_for
from .masks import pixel_mask_to_token_mask
from .vae import encode_frames

BACKGROUND_FILL = 0.5
#: LTX-2's frame rate, for clips whose own rate is unknown (RoPE's time axis is in seconds: frame / fps).
DEFAULT_FPS = 24.0
GEOMETRY_MODES = ("pad", "strict")
_FILL_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class EditContext:
    """Everything the sampler and the compositor need about one clip and its edit mask (`fill`: the grey-clip
    latents an edit region is blanked to; `fps`: the clip's frame rate, RoPE's time axis)."""

    frames: torch.Tensor
    mask: torch.Tensor
    source_latents: torch.Tensor
    background_latents: torch.Tensor
    token_mask: torch.Tensor
    grid: LatentGrid
    padding: Padding | None = None
    fill: torch.Tensor | None = None
    fps: float = DEFAULT_FPS

    @property
    def notes(self) -> list[str]:
        """What the user should know about this context: its grid and mask share, the padding applied, an empty
        mask."""
        g = self.grid
        notes = [f"{g.pixel_frames} frames at {g.pixel_height}x{g.pixel_width} -> latent grid {g.frames}x{g.height}x"
                 f"{g.width} ({g.num_tokens} tokens); the mask covers {int(self.token_mask.sum())} tokens "
                 f"({100 * self.mask_fraction:.1f}%)"]
        notes += [self.padding.describe()] if self.padding is not None else []
        if not bool(self.token_mask.any()):
            notes.append("the mask is empty (no pixel >= 0.5), so the sampler will return the source unchanged; "
                         "draw or select the region to edit")
        return [n for n in notes if n]

    def crop(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames on the model's grid [F',H',W',3] → the clip's own frames and size."""
        return frames if self.padding is None else self.padding.crop(frames)

    @property
    def mask_fraction(self) -> float:
        return float(self.token_mask.float().mean())

    def with_regions(self, masks: list[torch.Tensor]) -> EditContext:
        """This context with the pixel masks [F,H,W] (on its grid) added to the edit mask: the union is what the
        background blanks, the adapters' mask channel shows, the blend and the composite keep; regions outside the
        first mask are edited like it."""
        if not masks:
            return self
        pixel = self.mask
        for mask in masks:
            pixel = torch.maximum(pixel, mask.to(pixel))
        tokens = pixel_mask_to_token_mask(pixel) | self.token_mask
        added = tokens & ~self.token_mask
        background = self.background_latents
        if bool(added.any()):
            if self.fill is None:
                raise ValueError("a region reaches beyond the edit mask, but this edit context has no fill latents to "
                                 "blank it with; include every region in the mask given to EditCtrl Encode")
            background = blank_background(background, added, self.fill)
        return replace(self, mask=pixel, background_latents=background, token_mask=tokens)


def to_tokens(latents: torch.Tensor) -> torch.Tensor:
    """Latents [B,C,f,h,w] → tokens [B,f*h*w,C] in the transformer's (frame, row, column) order."""
    b, c = latents.shape[:2]
    return latents.permute(0, 2, 3, 4, 1).reshape(b, -1, c)


def from_tokens(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Tokens [B,N,C] → latents [B,C,f,h,w]."""
    b, _, c = tokens.shape
    f, h, w = grid
    return tokens.reshape(b, f, h, w, c).permute(0, 4, 1, 2, 3)


def conform(frames: torch.Tensor, mask: torch.Tensor, geometry: str = "pad"
            ) -> tuple[torch.Tensor, torch.Tensor, Padding]:
    """Check frames [F,H,W,3] and mask [F,H,W] (finite, same shape, mask in 0..1) and put them on LTX-2's grid:
    `pad` pads (edges and the last frame replicated; `Padding` crops back), `strict` refuses any other shape with
    every problem named at once."""
    if geometry not in GEOMETRY_MODES:
        raise GeometryError(f"geometry must be one of {', '.join(GEOMETRY_MODES)}; got {geometry!r}")
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
    check_finite_tensor("frames", frames, "the source video has NaN/Inf pixels; fix or re-decode the clip")
    check_finite_tensor("mask", mask, "the mask has NaN/Inf values; rebuild it (values 0..1)")
    f, h, w = frames.shape[:3]
    if geometry == "strict":
        check_geometry(f, h, w)
        return frames, mask, Padding.for_shape(f, h, w)
    padding = Padding.for_shape(f, h, w)
    return padding.pad(frames), padding.pad(mask), padding


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
                 geometry: str = "pad", fps: float = DEFAULT_FPS) -> EditContext:
    """VAE-encode the source clip once, map the mask to tokens and blank those tokens to the grey-clip latents
    (the background the SCD encoder and the adapters see, exactly as in training). Any clip shape goes in; it is
    padded to LTX-2's grid and `EditContext.crop` takes the result back to it. `fps` is the clip's frame rate."""
    check_finite_value("fps", fps)
    if fps <= 0:
        raise ValueError(f"fps must be > 0; got {fps}")
    frames, mask, padding = conform(frames.float(), mask.float(), geometry)
    grid = grid_for(frames.shape[0], frames.shape[1], frames.shape[2])
    source = encode_frames(vae, frames).cpu()
    token_mask = pixel_mask_to_token_mask(mask)
    fill = fill_latents(vae, tuple(frames.shape[:3]))
    background = blank_background(source, token_mask, fill) if bool(token_mask.any()) else source.clone()
    return EditContext(frames, mask, source, background, token_mask, grid, padding, fill, float(fps))
