"""Local VAE decode: decode only the latent box around the (dilated) edit plus a halo, composite the rest from source.

The LTX-2 video decoder is fully convolutional with per-pixel RMS norms (no attention, no group norm), so an output
pixel depends only on latents within its receptive field. :func:`receptive_radius_px` measures that field by running
the decoder once (on the ``meta`` device: no memory, no compute) with hooks on every convolution; a halo of
:func:`exact_halo_tokens` latent tokens therefore gives pixels identical to a full decode wherever the edit can be
(tested on the tiny VAE). For the real LTX-2 VAE that exact radius is larger than a 768×512 frame, so exactness
costs a full decode; :data:`DEFAULT_HALO_TOKENS` (2 tokens = 64 px) is the overlap diffusers' own tiled decode
uses for LTX-2 and is approximate — the benchmark reports the measured difference. Only the spatial extent is
cropped; all frames are decoded (the decoder's temporal upsampling starts from the first latent frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLLTX2Video

from ..edit.blend import composite
from ..edit.geometry import SPATIAL_FACTOR
from .vae import decode_latents

DEFAULT_HALO_TOKENS = 2


@dataclass(frozen=True)
class LatentBox:
    """A spatial box on the latent grid, rows [y0,y1) × columns [x0,x1), all frames."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def area(self) -> int:
        """Number of latent positions per frame in the box."""
        return (self.y1 - self.y0) * (self.x1 - self.x0)

    def pixels(self, spatial: int = SPATIAL_FACTOR) -> tuple[int, int, int, int]:
        """The same box in output pixels (y0, y1, x0, x1)."""
        return self.y0 * spatial, self.y1 * spatial, self.x0 * spatial, self.x1 * spatial


def receptive_radius_px(vae: AutoencoderKLLTX2Video, spatial: int = SPATIAL_FACTOR) -> float:
    """Spatial receptive-field radius of the decoder in output pixels (Σ conv half-kernels at their resolutions)."""
    latent_h = 4
    records: list[tuple[int, int, int]] = []

    def hook(module: torch.nn.Conv3d, args: tuple[torch.Tensor, ...]) -> None:
        records.append((args[0].shape[-2], module.kernel_size[1], module.dilation[1]))

    with torch.device("meta"):
        decoder = AutoencoderKLLTX2Video.from_config(vae.config).decoder
    for m in decoder.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.register_forward_pre_hook(hook)
    z = torch.zeros(1, vae.config.latent_channels, 2, latent_h, latent_h, device="meta")
    temb = torch.zeros(1, device="meta") if vae.config.timestep_conditioning else None
    decoder(z, temb)
    # each conv runs at `height / latent_h` times the latent resolution; one latent token is `spatial` output pixels
    return sum((kernel // 2) * dilation * spatial * latent_h / height for height, kernel, dilation in records)


def exact_halo_tokens(vae: AutoencoderKLLTX2Video, spatial: int = SPATIAL_FACTOR) -> int:
    """Halo in latent tokens for which local decoding is exact inside the box it was grown from."""
    return math.ceil(receptive_radius_px(vae, spatial) / spatial)


def edit_box(token_mask: torch.Tensor) -> LatentBox | None:
    """Bounding box (over all frames) of a token mask [f,h,w]; None when empty."""
    rows = token_mask.any(dim=0).any(dim=1).nonzero().flatten()
    cols = token_mask.any(dim=0).any(dim=0).nonzero().flatten()
    if rows.numel() == 0:
        return None
    return LatentBox(int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def grow(box: LatentBox, halo: int, height: int, width: int) -> LatentBox:
    """The box grown by `halo` tokens on every side, clipped to the grid."""
    return LatentBox(max(0, box.y0 - halo), min(height, box.y1 + halo), max(0, box.x0 - halo), min(width, box.x1 + halo))


def local_decode(vae: AutoencoderKLLTX2Video, latents: torch.Tensor, token_mask: torch.Tensor,
                 halo: int = DEFAULT_HALO_TOKENS) -> tuple[torch.Tensor, LatentBox] | None:
    """Decode only the latents [1,C,f,h,w] in the edit box grown by `halo`: (frames [F,Hc,Wc,3], the box) or None."""
    box = edit_box(token_mask)
    if box is None:
        return None
    crop = grow(box, halo, latents.shape[-2], latents.shape[-1])
    frames = decode_latents(vae, latents[..., crop.y0:crop.y1, crop.x0:crop.x1])
    return frames, crop


def composite_local(source: torch.Tensor, decoded: torch.Tensor, crop: LatentBox, pixel_mask: torch.Tensor,
                    feather_px: float = 0.0, spatial: int = SPATIAL_FACTOR) -> torch.Tensor:
    """Source frames [F,H,W,3] with the locally decoded crop feathered in under `pixel_mask` [F,H,W].

    The feathered band must lie inside the decoded crop (raise otherwise): pixels beyond it are the source, bitwise.
    """
    y0, y1, x0, x1 = crop.pixels(spatial)
    hit = (pixel_mask >= 0.5).any(dim=0)
    rows, cols = hit.any(dim=1).nonzero().flatten(), hit.any(dim=0).nonzero().flatten()
    if rows.numel() == 0:
        return source.clone()
    r = int(math.floor(feather_px))
    height, width = source.shape[1:3]
    need = (max(0, int(rows[0]) - r), min(height, int(rows[-1]) + r + 1), max(0, int(cols[0]) - r),
            min(width, int(cols[-1]) + r + 1))
    if need[0] < y0 or need[1] > y1 or need[2] < x0 or need[3] > x1:
        raise ValueError(f"the mask grown by the {feather_px}px feather {need} leaves the decoded crop "
                         f"{(y0, y1, x0, x1)}; decode with a larger halo or a smaller feather")
    edited = torch.empty_like(source)
    edited[:, y0:y1, x0:x1] = decoded.to(source.dtype)
    return composite(edited, source, pixel_mask, feather_px)
