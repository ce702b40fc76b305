"""The edit context: source and background latents plus pixel/token masks, built once per edit."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLLTX2Video

from ..checks import check_finite_tensor, check_finite_value
from ..media.vae import encode_frames
from .geometry import GeometryError, LatentGrid, Padding, check_geometry, grid_for
from .masks import pixel_mask_to_token_mask

BACKGROUND_FILL = 0.5
#: LTX-2's frame rate, for clips whose own rate is unknown (RoPE's time axis is in seconds: frame / fps).
DEFAULT_FPS = 24.0
GEOMETRY_MODES = ("pad", "strict")
#: The global context's input (EditCtrl): this many frames (8n+1, LTX-2's frame rule) at about this long side.
GLOBAL_FRAMES = 9
GLOBAL_SIZE = 256
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
    #: VAE latents of the clip's low-resolution frames (computed on first use by :meth:`global_input`).
    global_latents: GlobalLatents | None = None
    vae: AutoencoderKLLTX2Video | None = field(default=None, repr=False, compare=False)

    def global_input(self) -> torch.Tensor:
        """The global context embedder's input [1,C+1,f',h',w'] for this edit mask (:func:`global_input`). The
        low-resolution VAE encode runs once per context, on first use (only edits with a global adapter pay it)."""
        if self.global_latents is None:
            if self.vae is None or self.frames is None or self.frames.ndim != 4 or self.frames.shape[0] != self.grid.pixel_frames:
                raise ValueError("the global context adapter needs the source frames and the VAE to encode them at "
                                 "low resolution, and this edit context has none; build it with EditCtrl Encode "
                                 "(or pass the frames)")
            self.global_latents = encode_global(self.vae, self.frames)
        return self.global_latents.input(self.token_mask)

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


def global_frame_index(num_frames: int, count: int = GLOBAL_FRAMES) -> torch.Tensor:
    """Pixel frames of the global input: `count` evenly spaced frames from first to last (all when there are no
    more); `count` and `num_frames` follow LTX-2's 8n+1 rule, so the subsampled clip is a valid VAE input."""
    if (count - 1) % 8 or (num_frames - 1) % 8:
        raise ValueError(f"frame counts must be 8n+1; got {num_frames} frames, {count} to keep")
    if num_frames <= count:
        return torch.arange(num_frames)
    return torch.linspace(0, num_frames - 1, count).round().long()


def global_size(height: int, width: int, size: int = GLOBAL_SIZE) -> tuple[int, int]:
    """Low-resolution (height, width) of the global input: the clip's aspect at about `size` on the long side,
    multiples of 32 (one latent token), never larger than the clip."""
    scale = min(1.0, size / max(height, width))
    return tuple(min(n, max(32, 32 * round(n * scale / 32))) for n in (height, width))


def low_res_frames(frames: torch.Tensor, count: int = GLOBAL_FRAMES, size: int = GLOBAL_SIZE
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames [F,H,W,3] → (the global input's frames [F',H',W',3], their indices [F'] in the clip)."""
    index = global_frame_index(frames.shape[0], count)
    h, w = global_size(frames.shape[1], frames.shape[2], size)
    picked = frames[index].float().permute(0, 3, 1, 2)
    if (h, w) != tuple(picked.shape[2:]):
        picked = F.interpolate(picked, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return picked.clamp(0, 1).permute(0, 2, 3, 1).contiguous(), index


@dataclass
class GlobalLatents:
    """The low-resolution clip the global context embedder sees: VAE latents [1,C,f',h',w'] of the clip's
    :func:`low_res_frames`, the grey-clip latents of that shape, and the frames' indices in the clip."""

    latents: torch.Tensor
    fill: torch.Tensor
    frame_index: torch.Tensor

    def input(self, token_mask: torch.Tensor) -> torch.Tensor:
        """[1,C+1,f',h',w']: the low-resolution latents with the edit region blanked to grey-clip latents (as the
        background is blanked) and the low-resolution edit mask appended as one more channel. `token_mask`
        [f,h,w] is the edit mask on the clip's latent grid."""
        mask = global_token_mask(token_mask, self.frame_index, tuple(self.latents.shape[2:]))
        latents = self.latents.float()
        blanked = torch.where(mask[None, None].to(latents.device), self.fill.to(latents), latents)
        return torch.cat([blanked, mask[None, None].to(latents)], dim=1)


def global_token_mask(token_mask: torch.Tensor, frame_index: torch.Tensor, grid: tuple[int, int, int]
                      ) -> torch.Tensor:
    """The clip's token mask [f,h,w] on the low-resolution grid (f',h',w') of the frames `frame_index`: a
    low-resolution token is masked when any full-resolution token under it is (nothing of the edit region leaks)."""
    f2, h2, w2 = grid
    index = frame_index.tolist()
    if f2 != 1 + (len(index) - 1) // 8:
        raise ValueError(f"{len(index)} low-resolution frames do not make {f2} latent frames")
    full = token_mask.bool().cpu()
    rows = []
    for j in range(f2):
        pixels = [index[0]] if j == 0 else index[8 * j - 7:8 * j + 1]
        frames = sorted({0 if p == 0 else (p + 7) // 8 for p in pixels})
        rows.append(full[frames].any(dim=0))
    stacked = torch.stack(rows).float()[:, None]
    return F.adaptive_max_pool2d(stacked, (h2, w2))[:, 0] > 0.5


def encode_global(vae: AutoencoderKLLTX2Video, frames: torch.Tensor, count: int = GLOBAL_FRAMES,
                  size: int = GLOBAL_SIZE) -> GlobalLatents:
    """VAE-encode the clip's low-resolution frames (:func:`low_res_frames`) and the grey clip of their shape."""
    small, index = low_res_frames(frames, count, size)
    return GlobalLatents(encode_frames(vae, small).cpu(), fill_latents(vae, tuple(small.shape[:3])), index)


def global_input(vae: AutoencoderKLLTX2Video, frames: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """EditCtrl's global context input [1,C+1,f',h',w'] for clip frames [F,H,W,3] (on LTX-2's grid) and the edit
    mask [f,h,w] on its latent grid: ~8 frames (9, the 8n+1 rule) resized to ~256 px, VAE-encoded, the edit region
    blanked to grey, plus the mask channel. Training caches :func:`encode_global` per clip and calls
    :meth:`GlobalLatents.input` per drawn mask: the same computation."""
    return encode_global(vae, frames).input(token_mask)


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
    padded to LTX-2's grid and `EditContext.crop` takes the result back to it. `fps` is the clip's frame rate. The
    global adapter's low-resolution encode is not run here: `EditContext.global_input` runs it on first use."""
    check_finite_value("fps", fps)
    if fps <= 0:
        raise ValueError(f"fps must be > 0; got {fps}")
    frames, mask, padding = conform(frames.float(), mask.float(), geometry)
    grid = grid_for(frames.shape[0], frames.shape[1], frames.shape[2])
    source = encode_frames(vae, frames).cpu()
    token_mask = pixel_mask_to_token_mask(mask)
    fill = fill_latents(vae, tuple(frames.shape[:3]))
    background = blank_background(source, token_mask, fill) if bool(token_mask.any()) else source.clone()
    return EditContext(frames, mask, source, background, token_mask, grid, padding, fill, float(fps), vae=vae)
