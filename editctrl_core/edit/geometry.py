"""LTX-2 latent geometry: which pixel shapes are valid and how they map onto the latent token grid."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

TEMPORAL_FACTOR = 8
SPATIAL_FACTOR = 32


class GeometryError(ValueError):
    """A frame count or frame size that LTX-2 cannot encode."""


@dataclass(frozen=True)
class LatentGrid:
    """Latent grid (frames, height, width) of a clip, plus the pixel shape it came from."""

    frames: int
    height: int
    width: int
    pixel_frames: int
    pixel_height: int
    pixel_width: int

    @property
    def num_tokens(self) -> int:
        return self.frames * self.height * self.width

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)


def latent_frames(pixel_frames: int, temporal: int = TEMPORAL_FACTOR) -> int:
    """Latent frame count for a causal LTX VAE: frame 0 alone, then one latent frame per `temporal` frames."""
    return (pixel_frames - 1) // temporal + 1


def _next_frames(pixel_frames: int, temporal: int) -> int:
    """Smallest valid frame count (8n+1) that holds `pixel_frames` frames."""
    return -(-max(pixel_frames - 1, 0) // temporal) * temporal + 1


def _next_size(size: int, spatial: int) -> int:
    """Smallest positive multiple of `spatial` that holds `size` pixels."""
    return max(1, -(-size // spatial)) * spatial


def geometry_problems(pixel_frames: int, height: int, width: int,
                      temporal: int = TEMPORAL_FACTOR, spatial: int = SPATIAL_FACTOR) -> list[str]:
    """Every reason LTX-2 cannot encode a clip of this shape as it is (empty when it can)."""
    problems = []
    if pixel_frames < 1:
        problems.append(f"the clip has {pixel_frames} frames; give at least 1")
    elif (pixel_frames - 1) % temporal:
        lower = (pixel_frames - 1) // temporal * temporal + 1
        fix = f"pad to {_next_frames(pixel_frames, temporal)}"
        fix += f" or trim to {lower}" if lower > 1 else ""
        problems.append(f"{pixel_frames} frames is not {temporal}n+1 (1, 9, 17, 25, ...); {fix}")
    for name, size in (("height", height), ("width", width)):
        if size < 1:
            problems.append(f"{name} is {size} px; give at least 1")
        elif size % spatial:
            lower = size // spatial * spatial
            fix = f"pad to {_next_size(size, spatial)}" + (f" or crop to {lower}" if lower else "")
            problems.append(f"{name} {size} px is not a multiple of {spatial}; {fix}")
    return problems


def check_geometry(pixel_frames: int, height: int, width: int,
                   temporal: int = TEMPORAL_FACTOR, spatial: int = SPATIAL_FACTOR) -> None:
    """Raise one GeometryError listing every problem of the shape (strict mode), or return when it is valid."""
    problems = geometry_problems(pixel_frames, height, width, temporal, spatial)
    if problems:
        raise GeometryError(f"LTX-2 cannot encode {pixel_frames} frames at {height}x{width} (HxW) as they are: "
                            + "; ".join(problems) + ". Use geometry 'pad' to pad, edit and crop back automatically.")


def check_frames(pixel_frames: int, temporal: int = TEMPORAL_FACTOR) -> None:
    """Raise unless `pixel_frames` is 8n+1."""
    problems = geometry_problems(pixel_frames, SPATIAL_FACTOR, SPATIAL_FACTOR, temporal)
    if problems:
        raise GeometryError(f"LTX-2 needs {temporal}n+1 frames: {problems[0]}")


def check_size(height: int, width: int, spatial: int = SPATIAL_FACTOR) -> None:
    """Raise unless height and width are positive multiples of `spatial`."""
    problems = geometry_problems(1, height, width, TEMPORAL_FACTOR, spatial)
    if problems:
        raise GeometryError(f"LTX-2 needs height and width that are multiples of {spatial}: " + "; ".join(problems))


def grid_for(pixel_frames: int, height: int, width: int,
             temporal: int = TEMPORAL_FACTOR, spatial: int = SPATIAL_FACTOR) -> LatentGrid:
    """Validated latent grid for a clip of the given pixel shape."""
    check_geometry(pixel_frames, height, width, temporal, spatial)
    return LatentGrid(latent_frames(pixel_frames, temporal), height // spatial, width // spatial,
                      pixel_frames, height, width)


PAD_MODE = "replicate"


@dataclass(frozen=True)
class Padding:
    """How a clip was padded to LTX-2's grid (edge pixels replicated; extra frames repeat the last one) and how to
    crop it back, so any frame count and size round-trips."""

    frames: int
    height: int
    width: int
    pad_frames: int = 0
    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    @classmethod
    def for_shape(cls, pixel_frames: int, height: int, width: int,
                  temporal: int = TEMPORAL_FACTOR, spatial: int = SPATIAL_FACTOR) -> Padding:
        """The smallest padding that makes the shape valid, split evenly between opposite edges."""
        if min(pixel_frames, height, width) < 1:
            raise GeometryError(f"clip of {pixel_frames} frames at {height}x{width} is empty; give at least one "
                                "frame of one pixel")
        extra_h = _next_size(height, spatial) - height
        extra_w = _next_size(width, spatial) - width
        return cls(pixel_frames, height, width, _next_frames(pixel_frames, temporal) - pixel_frames,
                   extra_h // 2, extra_h - extra_h // 2, extra_w // 2, extra_w - extra_w // 2)

    @property
    def is_identity(self) -> bool:
        return not (self.pad_frames or self.top or self.bottom or self.left or self.right)

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        return (self.frames + self.pad_frames, self.height + self.top + self.bottom,
                self.width + self.left + self.right)

    def pad(self, video: torch.Tensor) -> torch.Tensor:
        """[F,H,W] or [F,H,W,C] → the padded clip (edges and the last frame replicated)."""
        if self.is_identity:
            return video
        x = video if video.ndim == 4 else video.unsqueeze(-1)
        x = x.permute(3, 0, 1, 2).unsqueeze(0)
        x = F.pad(x, (self.left, self.right, self.top, self.bottom, 0, self.pad_frames), mode=PAD_MODE)
        x = x[0].permute(1, 2, 3, 0)
        return x if video.ndim == 4 else x[..., 0]

    def crop(self, video: torch.Tensor) -> torch.Tensor:
        """The padded clip [F',H',W',...] cropped back to the original frames and size."""
        return video[:self.frames, self.top:self.top + self.height, self.left:self.left + self.width]

    def describe(self) -> str:
        """One line for the node: what was added, or '' when nothing was."""
        if self.is_identity:
            return ""
        f, h, w = self.padded_shape
        return (f"padded {self.frames} frames at {self.height}x{self.width} to {f} frames at {h}x{w} for LTX-2 "
                f"({self.pad_frames} repeated last frame(s); rows +{self.top}/+{self.bottom}, columns "
                f"+{self.left}/+{self.right}, edge pixels replicated); the output is cropped back to "
                f"{self.frames} frames at {self.height}x{self.width}")
