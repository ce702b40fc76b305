"""LTX-2 latent geometry: which pixel shapes are valid and how they map onto the latent token grid."""

from __future__ import annotations

from dataclasses import dataclass

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


def check_frames(pixel_frames: int, temporal: int = TEMPORAL_FACTOR) -> None:
    """Raise unless `pixel_frames` is 8n+1."""
    if pixel_frames < 1 or (pixel_frames - 1) % temporal != 0:
        lo = max(1, (pixel_frames - 1) // temporal * temporal + 1)
        raise GeometryError(
            f"LTX-2 needs {temporal}n+1 frames (1, 9, 17, 25, ...); got {pixel_frames}. "
            f"Trim to {lo} frames or enable snapping."
        )


def check_size(height: int, width: int, spatial: int = SPATIAL_FACTOR) -> None:
    """Raise unless height and width are positive multiples of `spatial`."""
    if height < spatial or width < spatial or height % spatial or width % spatial:
        raise GeometryError(
            f"LTX-2 needs height and width that are multiples of {spatial}; got {height}x{width} (HxW). "
            f"Resize/crop to {max(spatial, height // spatial * spatial)}x{max(spatial, width // spatial * spatial)} "
            "or enable snapping."
        )


def grid_for(pixel_frames: int, height: int, width: int,
             temporal: int = TEMPORAL_FACTOR, spatial: int = SPATIAL_FACTOR) -> LatentGrid:
    """Validated latent grid for a clip of the given pixel shape."""
    check_frames(pixel_frames, temporal)
    check_size(height, width, spatial)
    return LatentGrid(latent_frames(pixel_frames, temporal), height // spatial, width // spatial,
                      pixel_frames, height, width)


def snap_shape(pixel_frames: int, height: int, width: int,
               temporal: int = TEMPORAL_FACTOR, spatial: int = SPATIAL_FACTOR) -> tuple[int, int, int]:
    """Largest valid (frames, height, width) that fits inside the given shape (trim frames, centre-crop)."""
    if pixel_frames < 1 or height < spatial or width < spatial:
        raise GeometryError(
            f"clip of {pixel_frames} frames at {height}x{width} is too small for LTX-2 "
            f"(needs at least 1 frame of {spatial}x{spatial})"
        )
    return ((pixel_frames - 1) // temporal * temporal + 1, height // spatial * spatial, width // spatial * spatial)
