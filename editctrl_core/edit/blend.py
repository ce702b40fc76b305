"""Boundary blending between edited and untouched content: re-noised latent blend, the seed's distance blend, pixel feather.

Three modes:

- ``renoised`` (default): at every step, tokens outside the edit take the source latents re-noised to the current
  σ (``(1-σ)·source + σ·noise``, the flow-matching path), mixed with the sampler's latents by a per-token α built
  from the PIXEL mask with a falloff in pixels: α = 1 on tokens the mask covers, ramps down outside, exactly 0
  beyond the falloff (those tokens equal the re-noised source bitwise).
- ``distance``: the seed's method, kept for fidelity. α from 3×3 erosion distances on the token grid through a
  sigmoid; blended against the CLEAN source.
- ``pixel``: hard latent mask during sampling (α = the token mask); the only soft transition is the feathered
  composite after decode.

Whatever the mode, :func:`composite` after decode puts the source pixels back exactly beyond the feather.

Every mask op here runs as torch ops on the device given (``device=``; default: where the mask, or for the composite
the decoded frames, lie), with a few host reads per call (box bounds, distinct frames, two search bounds per chunk of
distinct frames) and none per step, frame or pixel column; the distance transform is integer arithmetic, so distances
are identical on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import check_finite_tensor, check_finite_value
from .geometry import SPATIAL_FACTOR, TEMPORAL_FACTOR, check_frames, check_size

BLEND_MODES = ("renoised", "distance", "pixel")
RAMP_SHAPES = ("cosine", "linear")

_FRAME_CHUNK_PIXELS = 1 << 22
_EDT_CHECKPOINT = 8  # column offset after which the transform re-reads its bound (the only other host read)


Device = torch.device | str | None


def _binary(mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean view of a bool or float mask (float values >= threshold count as inside)."""
    return mask if mask.dtype == torch.bool else mask >= threshold


def _moved(t: torch.Tensor, device: Device) -> torch.Tensor:
    """t on ``device`` (None: unchanged); an expanded static mask (frame stride 0) crosses the bus as one frame."""
    if device is None:
        return t
    if t.ndim > 0 and t.shape[0] > 1 and t.stride(0) == 0:
        return t[:1].to(device).expand(t.shape)
    return t.to(device)


def _hit_on(mask: torch.Tensor, threshold: float, device: Device) -> torch.Tensor:
    """Boolean mask on ``device`` (None: where it lies), thresholded there so the comparison runs on that device."""
    return _binary(_moved(mask, device), threshold)


def _box(hit: torch.Tensor, radius: int) -> tuple[int, int, int, int] | None:
    """Box (y0, y1, x0, x1) of the True pixels of hit [n,H,W] over all frames grown by radius, or None (one read)."""
    height, width = hit.shape[-2:]
    rows = hit.any(dim=2).any(dim=0).to(torch.int32)
    cols = hit.any(dim=1).any(dim=0).to(torch.int32)
    ends = torch.stack([rows.amax().long(), rows.argmax(), height - 1 - rows.flip(0).argmax(),
                        cols.argmax(), width - 1 - cols.flip(0).argmax()]).tolist()  # argmax: first maximum
    if not ends[0]:
        return None
    return (max(0, ends[1] - radius), min(height, ends[2] + radius + 1),
            max(0, ends[3] - radius), min(width, ends[4] + radius + 1))


def _edt_chunk(hit: torch.Tensor, radius: int) -> torch.Tensor:
    """Squared distances to the nearest True pixel for hit [n,H,W]; values above radius² come out > radius²."""
    n, height, width = hit.shape
    far = radius + 1
    dtype = torch.int16 if 2 * far * far < torch.iinfo(torch.int16).max else torch.int32
    rows = torch.arange(height, device=hit.device, dtype=torch.int32).view(1, height, 1).expand(n, height, width)
    big = height + far
    above = torch.where(hit, rows, torch.full_like(rows, -big)).cummax(dim=1).values
    below = torch.where(hit, rows, torch.full_like(rows, 2 * big)).flip(1).cummin(dim=1).values.flip(1)
    g2 = torch.minimum(rows - above, below - rows).clamp(max=far).to(dtype).square()
    d2 = g2.clone()
    tmp = torch.empty_like(g2)
    reach = min(radius, width - 1, math.isqrt(int(g2.max())))  # a column dx away costs >= dx² > max d2: no gain
    dx = 0
    while dx < reach:
        dx += 1
        cost = dx * dx
        torch.add(g2[..., :-dx], cost, out=tmp[..., dx:])
        torch.minimum(d2[..., dx:], tmp[..., dx:], out=d2[..., dx:])
        torch.add(g2[..., dx:], cost, out=tmp[..., :-dx])
        torch.minimum(d2[..., :-dx], tmp[..., :-dx], out=d2[..., :-dx])
        if dx == _EDT_CHECKPOINT:
            reach = min(reach, math.isqrt(int(d2.max())))  # the same bound once near columns have lowered d2
    return d2


@dataclass(frozen=True)
class _Field:
    """A per-frame field stored compactly: values for distinct consecutive frames, cropped to a box, fill outside."""

    values: torch.Tensor
    owner: torch.Tensor
    box: tuple[int, int, int, int] | None
    shape: tuple[int, ...]
    fill: float

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], fill: float) -> _Field:
        """Apply an elementwise function (``fill`` is its value at the old fill)."""
        return _Field(fn(self.values), self.owner, self.box, self.shape, fill)

    def full(self) -> torch.Tensor:
        """The field as a dense float32 tensor of the original shape."""
        height, width = self.shape[-2:]
        out = torch.full((self.owner.shape[0], height, width), self.fill, dtype=torch.float32,
                         device=self.owner.device)
        if self.box is not None:
            y0, y1, x0, x1 = self.box
            out[:, y0:y1, x0:x1] = self.values[self.owner]
        return out.reshape(self.shape)


def _distance_field(mask: torch.Tensor, max_distance: float | None, threshold: float,
                    device: Device = None) -> _Field:
    """Exact distance field of mask [...,H,W] as a compact ``_Field`` on ``device`` (see ``pixel_distance``)."""
    if mask.ndim < 2:
        raise ValueError(f"mask must be [..., height, width]; got shape {tuple(mask.shape)}")
    if max_distance is not None and max_distance < 0:
        raise ValueError(f"max_distance must be >= 0; got {max_distance}")
    height, width = mask.shape[-2:]
    hit = _hit_on(mask, threshold, device).reshape(-1, height, width)
    limit = float(height + width) if max_distance is None else float(max_distance)
    radius = int(math.floor(limit))
    box = _box(hit, radius)
    if box is None:
        owner = torch.zeros(hit.shape[0], dtype=torch.long, device=hit.device)
        return _Field(torch.empty(0, 0, 0, device=hit.device), owner, None, tuple(mask.shape), math.inf)
    y0, y1, x0, x1 = box
    crop = hit[:, y0:y1, x0:x1]  # every True pixel lies in the box, so frames differ iff their crops differ
    changed = torch.ones(crop.shape[0], dtype=torch.bool, device=hit.device)
    if crop.shape[0] > 1:
        changed[1:] = (crop[1:] != crop[:-1]).flatten(1).any(dim=1)
    owner = torch.cumsum(changed.long(), dim=0) - 1
    unique = crop[changed]
    chunk = max(1, _FRAME_CHUNK_PIXELS // max(1, unique.shape[1] * unique.shape[2]))
    parts = []
    for i in range(0, unique.shape[0], chunk):
        d = _edt_chunk(unique[i:i + chunk], radius).to(torch.float64).sqrt().to(torch.float32)
        parts.append(d.masked_fill_(d > limit, math.inf))
    return _Field(torch.cat(parts), owner, box, tuple(mask.shape), math.inf)


def pixel_distance(mask: torch.Tensor, max_distance: float | None = None, threshold: float = 0.5,
                   device: Device = None) -> torch.Tensor:
    """Exact Euclidean distance in pixels from each pixel of mask [...,H,W] to the nearest mask pixel, per 2D frame.

    0 inside the mask. Distances greater than ``max_distance`` (and every pixel of an empty frame) are ``inf``;
    the transform only searches that far (and only inside the masks' box grown by it), which keeps it cheap for
    small falloffs. Exact: a separable two-pass transform (column distances, then a windowed minimum over
    columns) in integers, then one correctly rounded sqrt (in float64, rounded to float32: that is the correctly
    rounded float32 root, while CUDA's float32 sqrt was one ulp off at times on an H200), so every device gives the
    same bits. Runs of identical
    consecutive frames (static masks) are computed once. Computed and returned on ``device`` (None: the mask's).
    """
    return _distance_field(mask, max_distance, threshold, device).full()


def falloff_ramp(distance: torch.Tensor, falloff: float, shape: str = "cosine") -> torch.Tensor:
    """Map distances outside an edge to α: 1 at distance 0, decreasing, exactly 0 at and beyond ``falloff``."""
    if shape not in RAMP_SHAPES:
        raise ValueError(f"ramp shape must be one of {RAMP_SHAPES}; got {shape!r}")
    if falloff <= 0:
        return (distance <= 0).to(torch.float32)
    t = (distance.to(torch.float32) / float(falloff)).clamp(0.0, 1.0)
    alpha = 0.5 * (1.0 + torch.cos(math.pi * t)) if shape == "cosine" else 1.0 - t
    alpha = torch.where(t >= 1.0, torch.zeros_like(alpha), alpha)
    return torch.where(distance <= 0, torch.ones_like(alpha), alpha)


def _group_frames(hit: torch.Tensor, temporal: int) -> torch.Tensor:
    """Union of a boolean pixel mask [F,H,W] over LTX's causal frame groups (frame 0 alone, then groups)."""
    frames, height, width = hit.shape
    rest = hit[1:]
    if rest.shape[0] == 0:
        return hit[:1]
    return torch.cat([hit[:1], rest.reshape(-1, temporal, height, width).any(dim=1)], dim=0)


def renoise_alpha(pixel_mask: torch.Tensor, falloff_px: float, temporal: int = TEMPORAL_FACTOR,
                  spatial: int = SPATIAL_FACTOR, threshold: float = 0.5, shape: str = "cosine",
                  device: Device = None) -> torch.Tensor:
    """Per-token α [f,h,w] (float32) for the ``renoised`` blend from a pixel mask [F,H,W] and a falloff in pixels.

    Pixels are grouped in time the way LTX-2's causal VAE groups them (frame 0 alone, then groups of
    ``temporal``); each pixel gets ``falloff_ramp`` of its exact distance to the group's mask; a token's α is the
    mean over its ``spatial``×``spatial`` patch, forced to 1 when any pixel of the token is covered (the same
    max-pool rule as ``pixel_mask_to_token_mask``). Tokens whose every pixel lies ``falloff_px`` or more from the
    mask get exactly 0. Computed and returned on ``device`` (None: the mask's).
    """
    if pixel_mask.ndim != 3:
        raise ValueError(f"pixel_mask must be [frames, height, width]; got shape {tuple(pixel_mask.shape)}")
    if falloff_px < 0:
        raise ValueError(f"falloff_px must be >= 0; got {falloff_px}")
    frames, height, width = pixel_mask.shape
    check_frames(frames, temporal)
    check_size(height, width, spatial)
    grouped = _group_frames(_hit_on(pixel_mask, threshold, device), temporal)
    covered = F.max_pool2d(grouped.float().unsqueeze(1), spatial, spatial).squeeze(1) > 0
    if falloff_px == 0:
        return covered.to(torch.float32)
    ramp = falloff_ramp(pixel_distance(grouped, falloff_px), falloff_px, shape)
    alpha = F.avg_pool2d(ramp.unsqueeze(1), spatial, spatial).squeeze(1).clamp(0.0, 1.0)
    return torch.where(covered, torch.ones_like(alpha), alpha)


def dilation_for_falloff(falloff_px: float, spatial: int = SPATIAL_FACTOR) -> int:
    """Token dilation of the covered mask that contains every token with α > 0 for this falloff in pixels."""
    if falloff_px <= 1:
        return 0
    return int(math.ceil((falloff_px - 1) / spatial))


@dataclass(frozen=True)
class BlendSchedule:
    """When the soft α takes over: hard mask for the first ``hard_fraction`` of the steps, then a ramp to soft.

    Step ``i`` of ``n`` (0-based) means the blend applied after the sampler's step ``i``. Hard for
    ``i < floor(hard_fraction·n)`` (the seed's rule); then the ramp spans ``ramp_fraction·n`` steps (default: all
    remaining ones) and reaches the soft α exactly on its last step, so the final latents use the soft α.
    """

    hard_fraction: float = 0.5
    ramp_fraction: float | None = None
    shape: str = "cosine"

    def __post_init__(self) -> None:
        """Validate the fractions and the ramp shape."""
        if not 0.0 <= self.hard_fraction <= 1.0:
            raise ValueError(f"hard_fraction must be in [0, 1]; got {self.hard_fraction}")
        if self.ramp_fraction is not None and not 0.0 < self.ramp_fraction <= 1.0:
            raise ValueError(f"ramp_fraction must be in (0, 1] or None; got {self.ramp_fraction}")
        if self.shape not in RAMP_SHAPES:
            raise ValueError(f"shape must be one of {RAMP_SHAPES}; got {self.shape!r}")

    def weight(self, step: int, num_steps: int) -> float:
        """Soft weight in [0, 1] for this step: 0 = hard mask, 1 = soft α."""
        if num_steps < 1 or not 0 <= step < num_steps:
            raise ValueError(f"step must be in [0, num_steps) with num_steps >= 1; got step={step}, num_steps={num_steps}")
        start = int(math.floor(self.hard_fraction * num_steps + 1e-9))
        if step < start:
            return 0.0
        remaining = num_steps - start
        length = remaining if self.ramp_fraction is None else max(1, round(self.ramp_fraction * num_steps))
        t = min(1.0, (step - start + 1) / length)
        if self.shape == "linear":
            return t
        return 1.0 if t >= 1.0 else 0.5 * (1.0 - math.cos(math.pi * t))


def scheduled_alpha(hard: torch.Tensor, soft: torch.Tensor, step: int, num_steps: int,
                    schedule: BlendSchedule | None = None) -> torch.Tensor:
    """α for this step: ``hard`` exactly before the ramp, ``soft`` exactly after it, lerp in between."""
    w = (schedule or BlendSchedule()).weight(step, num_steps)
    hard = hard.to(torch.float32)
    soft = soft.to(torch.float32)
    if w <= 0.0:
        return hard.clone()
    if w >= 1.0:
        return soft.clone()
    return torch.lerp(hard, soft, w)


def _alpha_like(alpha: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Lay α out against x: [f,h,w] vs [B,C,f,h,w]; [N] or [f,h,w] vs token-major [B,N,C]; else plain broadcasting."""
    if alpha.ndim == 3 and x.ndim == 5 and tuple(alpha.shape) == tuple(x.shape[2:]):
        return alpha.view(1, 1, *alpha.shape)
    if x.ndim == 3 and alpha.ndim in (1, 3) and alpha.numel() == x.shape[1]:
        return alpha.reshape(1, -1, 1)
    try:
        torch.broadcast_shapes(alpha.shape, x.shape)
    except RuntimeError as err:
        raise ValueError(
            f"alpha of shape {tuple(alpha.shape)} does not fit latents of shape {tuple(x.shape)}; pass [f,h,w] for "
            "[B,C,f,h,w] latents or [N] for token-major [B,N,C] latents"
        ) from err
    return alpha


def _sigma_like(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """σ as a tensor broadcastable to x (scalar, or one per batch element)."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        return s
    if s.ndim == 1 and s.shape[0] == x.shape[0]:
        return s.view(-1, *([1] * (x.ndim - 1)))
    raise ValueError(f"sigma must be a scalar or one value per batch element; got shape {tuple(s.shape)}")


def renoise(source_latents: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Source latents moved to noise level σ along the flow-matching path: (1-σ)·source + σ·noise."""
    s = _sigma_like(sigma, source_latents)
    return (1 - s) * source_latents + s * noise.to(source_latents.dtype)


def _mix(x: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """α·x + (1-α)·target, with α = 1 giving x and α = 0 giving target bitwise."""
    a = _alpha_like(alpha.to(device=x.device, dtype=x.dtype), x)
    target = target.to(x.dtype)
    mixed = torch.lerp(target, x, a)
    return torch.where(a >= 1, x, torch.where(a <= 0, target, mixed))


def blend_step(x: torch.Tensor, source_latents: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float,
               alpha: torch.Tensor) -> torch.Tensor:
    """``renoised`` blend: tokens take α·x + (1-α)·((1-σ)·source + σ·noise); α = 0 tokens equal that exactly.

    ``sigma`` is the noise level x is at (after an Euler step to σ_next, pass σ_next; at σ = 0 outside tokens equal
    the source). ``noise`` should be the edit's initial noise, reused every step. Layouts: x/source/noise
    [B,C,f,h,w] with α [f,h,w], or token-major [B,N,C] (full or gathered at ``idx``) with α [N].
    """
    return _mix(x, renoise(source_latents, noise, sigma), alpha)


def blend_clean_step(x: torch.Tensor, source_latents: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``distance`` blend as the seed did it: α·x + (1-α)·source with the CLEAN source at every step."""
    return _mix(x, source_latents, alpha)


def compute_boundary_blend_mask(token_mask: torch.Tensor, falloff: int = 3, sharpness: float = 10.0) -> torch.Tensor:
    """The seed's soft mask: α = sigmoid(sharpness·(d_in − d_out)/falloff) from repeated 3×3 erosions per frame.

    ``token_mask`` is [f,h,w] or [h,w] (True = edit). d_in counts the erosions (up to ``falloff``) a token of the
    mask survives, d_out the same for the complement; like the seed, the grid border does not erode. Tokens on
    either side of the edge get 0.5 and far tokens sigmoid(±sharpness), never exactly 0 or 1 (kept for fidelity).
    ``falloff`` = 0 gives the hard mask.
    """
    if token_mask.ndim not in (2, 3):
        raise ValueError(f"token_mask must be [f,h,w] or [h,w]; got shape {tuple(token_mask.shape)}")
    if falloff < 0:
        raise ValueError(f"falloff must be >= 0; got {falloff}")
    grid = _binary(token_mask, 0.5).to(torch.float32)
    frames = grid.reshape(-1, 1, *grid.shape[-2:])
    if falloff == 0:
        return grid.clone()

    def survived(m: torch.Tensor) -> torch.Tensor:
        """Erosions (up to falloff) each cell of m survives."""
        total = torch.zeros_like(m)
        for _ in range(falloff):
            m = -F.max_pool2d(-m, kernel_size=3, stride=1, padding=1)
            total = total + m
        return total

    signed = survived(frames) - survived(1.0 - frames)
    return torch.sigmoid(sharpness * signed / falloff).reshape(grid.shape)


def _feather_field(pixel_mask: torch.Tensor, feather_px: float, threshold: float, shape: str,
                   device: Device = None) -> _Field:
    """Compact pixel α field for ``feather_mask``/``composite``, on ``device``."""
    if pixel_mask.ndim != 3:
        raise ValueError(f"pixel_mask must be [frames, height, width]; got shape {tuple(pixel_mask.shape)}")
    if feather_px < 0:
        raise ValueError(f"feather_px must be >= 0; got {feather_px}")
    return _distance_field(pixel_mask, feather_px, threshold, device).map(
        lambda d: falloff_ramp(d, feather_px, shape), 0.0)


def feather_mask(pixel_mask: torch.Tensor, feather_px: float, threshold: float = 0.5,
                 shape: str = "cosine", device: Device = None) -> torch.Tensor:
    """Pixel α [F,H,W]: 1 inside the mask, ramping to exactly 0 at ``feather_px`` outside (exact distance, per frame)."""
    return _feather_field(pixel_mask, feather_px, threshold, shape, device).full()


def composite(edited: torch.Tensor, source: torch.Tensor, mask: torch.Tensor, feather_px: float,
              threshold: float = 0.5, shape: str = "cosine", device: Device = None) -> torch.Tensor:
    """Final pixel composite [F,H,W,C]: edited inside, feathered seam, the source bitwise beyond the feather.

    ``mask`` is [F,H,W] (or [1,H,W] for a static mask). Runs on ``device`` (None: the edited frames' device, i.e.
    the decode's): frames and mask go there once, the α field, the checks and the mix run there in the source's
    dtype, and the result comes back once, with the source's dtype and device (a CPU IMAGE stays a CPU IMAGE).
    Only the box around the mask (grown by the feather) is mixed; the rest is a copy of the source.
    """
    if edited.shape != source.shape or edited.ndim != 4:
        raise ValueError(f"edited frames {tuple(edited.shape)} and source frames {tuple(source.shape)} differ; both "
                         "must be [F,H,W,C] of one clip (connect the images output of EditCtrl Encode as source)")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    check_finite_value("feather_px", feather_px)
    if mask.ndim != 3 or mask.shape[-2:] != source.shape[1:3] or mask.shape[0] not in (1, source.shape[0]):
        raise ValueError(f"mask must be [F,H,W] or [1,H,W] matching the frames {tuple(source.shape[:3])}; "
                         f"got {tuple(mask.shape)}")
    work = edited.device if device is None else torch.device(device)
    edited_w, source_w, mask_w = edited.to(work), source.to(work), _moved(mask, work)
    check_finite_tensor("edited frames", edited_w)
    check_finite_tensor("source frames", source_w)
    check_finite_tensor("mask", mask_w)
    out = source_w.clone() if source_w is source else source_w
    field = _feather_field(mask_w, feather_px, threshold, shape)
    if field.box is not None:
        y0, y1, x0, x1 = field.box
        alpha = field.values[field.owner].unsqueeze(-1).to(source.dtype)
        src = out[:, y0:y1, x0:x1]
        edt = edited_w[:, y0:y1, x0:x1].to(source.dtype)
        mixed = torch.lerp(src, edt, alpha)
        out[:, y0:y1, x0:x1] = torch.where(alpha <= 0, src, torch.where(alpha >= 1, edt, mixed))
    return out.to(source.device)


@dataclass(frozen=True)
class BlendSettings:
    """User-facing blend options (what a sampler node exposes)."""

    mode: str = "renoised"
    falloff_px: float = 64.0
    hard_fraction: float = 0.5
    ramp_fraction: float | None = None
    ramp_shape: str = "cosine"
    falloff_tokens: int = 3
    sharpness: float = 10.0
    feather_px: float = 16.0

    def __post_init__(self) -> None:
        """Validate the mode and distances."""
        for name in ("falloff_px", "hard_fraction", "sharpness", "feather_px"):
            check_finite_value(name, getattr(self, name))
        if self.ramp_fraction is not None:
            check_finite_value("ramp_fraction", self.ramp_fraction)
        if self.mode not in BLEND_MODES:
            raise ValueError(f"blend mode must be one of {BLEND_MODES}; got {self.mode!r}")
        if self.falloff_px < 0 or self.feather_px < 0 or self.falloff_tokens < 0:
            raise ValueError("falloff_px, feather_px and falloff_tokens must be >= 0")
        BlendSchedule(self.hard_fraction, self.ramp_fraction, self.ramp_shape)

    @property
    def schedule(self) -> BlendSchedule:
        """The step schedule these settings describe."""
        return BlendSchedule(self.hard_fraction, self.ramp_fraction, self.ramp_shape)


class BoundaryBlender:
    """Precomputed hard/soft α for one edit; applies the configured latent blend each step and the final composite."""

    def __init__(self, pixel_mask: torch.Tensor, settings: BlendSettings | None = None,
                 temporal: int = TEMPORAL_FACTOR, spatial: int = SPATIAL_FACTOR, threshold: float = 0.5,
                 device: Device = None) -> None:
        """Build the hard and soft α where the mask lies and keep them on ``device`` (the model's; None: the mask's).
        A MASK input lies on the CPU: there the α take ≈0.07 s for 121 frames at 768×512, while the first use of
        these kernels in a process costs ≈0.35 s on an H200 (benchmark, cold records); the α are token grids, so
        moving them is two small copies."""
        self.settings = settings or BlendSettings()
        self.spatial = spatial
        self.threshold = threshold
        self.pixel_mask = pixel_mask
        self._index: tuple[torch.Tensor, torch.Tensor] | None = None
        hard = renoise_alpha(pixel_mask, 0.0, temporal, spatial, threshold)
        if self.settings.mode == "renoised":
            soft = renoise_alpha(pixel_mask, self.settings.falloff_px, temporal, spatial, threshold,
                                 self.settings.ramp_shape)
        elif self.settings.mode == "distance":
            soft = compute_boundary_blend_mask(hard > 0, self.settings.falloff_tokens, self.settings.sharpness)
        else:
            soft = hard.clone()
        self.hard, self.soft = hard.to(device), soft.to(device)

    @property
    def required_dilation(self) -> int:
        """Token dilation the sparse sampler needs so every token with α > 0 is computed (distance: its falloff)."""
        if self.settings.mode == "renoised":
            return dilation_for_falloff(self.settings.falloff_px, self.spatial)
        if self.settings.mode == "distance":
            return self.settings.falloff_tokens
        return 0

    def alpha(self, step: int, num_steps: int, idx: torch.Tensor | None = None) -> torch.Tensor:
        """α [f,h,w] for this step, or [N] gathered at flat token indices ``idx``."""
        a = scheduled_alpha(self.hard, self.soft, step, num_steps, self.settings.schedule)
        return a if idx is None else a.reshape(-1)[self._on_alpha_device(idx)]

    def _on_alpha_device(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx`` on α's device, copied once per index tensor (the sampler passes one per window to every step)."""
        if self._index is None or self._index[0] is not idx:
            self._index = (idx, idx.to(self.hard.device))
        return self._index[1]

    def step(self, x: torch.Tensor, source_latents: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float,
             step: int, num_steps: int, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Blend x (at noise level ``sigma``) after sampler step ``step``; token-major inputs may be gathered at ``idx``."""
        a = self.alpha(step, num_steps, idx).to(x.device)
        if self.settings.mode == "distance":
            return blend_clean_step(x, source_latents, a)
        return blend_step(x, source_latents, noise, sigma, a)

    def composite(self, edited: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Pixel composite after decode with ``feather_px``; source pixels beyond the feather are returned bitwise."""
        return composite(edited, source, self.pixel_mask, self.settings.feather_px, self.threshold,
                         self.settings.ramp_shape)
