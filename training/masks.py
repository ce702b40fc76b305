"""Edit-mask strategies for training (the seed's `editctrl_scd_strategy`): random shapes, object masks, `mixed`.

A mask is a boolean tensor [frames, height, width] on whatever grid the caller asks for: the latent token grid
(e.g. 16 x 16 x 24) or pixels. Random shapes are static over time; their area (fraction of the grid) always lies
in [min_area, max_area]. Object masks come from per-sample files in `semantic_mask_dir` (written by the
precompute step with `save_object_masks`) or from a `SemanticMaskLibrary` (MuLAn). All randomness comes from one
seeded `torch.Generator`, whose state can be saved and restored for exact resume.

Per-sample object-mask file `{semantic_mask_dir}/{sample_id}.safetensors`:
    tensor `masks`: uint8/bool [N, f, h, w] (or [N, h, w] for static masks), one mask per object
    metadata `objects`: JSON list of N object names; `grid`: JSON [f, h, w]
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open

from editctrl_core.loading.weights_file import save_safetensors

RANDOM_SHAPES = ("rect", "ellipse", "brush")
MODES = ("random", "semantic", "mixed")
_MAX_TRIES = 24
_OBJECT_CACHE = 256


class MaskLibrary(Protocol):
    """Anything that can draw a 2-D object-shaped mask (e.g. `training.mulan.SemanticMaskLibrary`)."""

    def __len__(self) -> int:
        """Number of masks."""

    def sample(self, generator: torch.Generator, size: tuple[int, int] | None = None) -> torch.Tensor:
        """One boolean mask [h, w]."""


@dataclass(frozen=True)
class MaskStrategyConfig:
    """How training masks are drawn; defaults follow the seed (mixed 70/30, random areas 5-60%)."""

    mode: str = "mixed"
    semantic_mask_ratio: float = 0.7
    min_area: float = 0.05
    max_area: float = 0.6
    shapes: tuple[str, ...] = RANDOM_SHAPES
    object_min_area: float = 0.01
    object_max_area: float = 0.8
    semantic_mask_dir: str | None = None

    def __post_init__(self) -> None:
        """Validate every field, naming the bad one."""
        if self.mode not in MODES:
            raise ValueError(f"mask mode: {self.mode!r} is not one of {MODES}")
        if not 0.0 <= self.semantic_mask_ratio <= 1.0:
            raise ValueError(f"semantic_mask_ratio: {self.semantic_mask_ratio} is not in [0, 1]")
        if not 0.0 < self.min_area <= self.max_area <= 1.0:
            raise ValueError(f"min_area/max_area: need 0 < min_area <= max_area <= 1, got {self.min_area}, "
                             f"{self.max_area}")
        if not 0.0 <= self.object_min_area <= self.object_max_area <= 1.0:
            raise ValueError(f"object_min_area/object_max_area: need 0 <= min <= max <= 1, got "
                             f"{self.object_min_area}, {self.object_max_area}")
        bad = [s for s in self.shapes if s not in RANDOM_SHAPES]
        if bad or not self.shapes:
            raise ValueError(f"shapes: {list(self.shapes)} must be a non-empty subset of {RANDOM_SHAPES}")


@dataclass
class MaskDraw:
    """One drawn mask and where it came from (`object`, `library` or `random`)."""

    mask: torch.Tensor
    source: str
    kind: str
    area: float
    sample_id: str | None = None
    fallback: bool = False


@dataclass
class ObjectMasks:
    """Per-sample object masks: names[i] labels masks[i] ([f, h, w] bool)."""

    names: list[str]
    masks: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)


def _uniform(g: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    """One float uniform in [low, high) from the generator."""
    return low + (high - low) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """One int uniform in [low, high] (inclusive) from the generator."""
    return int(torch.randint(low, high + 1, (), generator=g))


def mask_area(mask: torch.Tensor) -> float:
    """Fraction of the grid covered by the mask."""
    return float(mask.float().mean())


def _rect_sides(h: int, w: int, lo: int, hi: int) -> list[tuple[int, int, int]]:
    """For each rectangle height a, the inclusive range of widths [b_lo, b_hi] with a*b cells in [lo, hi]."""
    out = []
    for a in range(1, h + 1):
        b_lo, b_hi = max(1, -(-lo // a)), min(w, hi // a)
        if b_lo <= b_hi:
            out.append((a, b_lo, b_hi))
    return out


@functools.lru_cache(maxsize=256)
def _area_window(h: int, w: int, min_area: float, max_area: float) -> tuple[int, int]:
    """Inclusive [lo, hi] cell counts matching the area bounds; raise if the grid cannot hold such a mask."""
    cells = h * w
    lo = max(1, math.ceil(min_area * cells - 1e-9))
    hi = math.floor(max_area * cells + 1e-9)
    if lo > hi or not _rect_sides(h, w, lo, hi):
        raise ValueError(f"a {h}x{w} grid cannot hold a rectangle with area in [{min_area}, {max_area}]")
    return lo, hi


def _grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell-centre coordinates (y, x), each [h, w]."""
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    return torch.meshgrid(ys, xs, indexing="ij")


def random_rectangle(h: int, w: int, g: torch.Generator, min_area: float, max_area: float) -> torch.Tensor:
    """Axis-aligned rectangle with a random aspect ratio (1:3..3:1) and random position."""
    target = _uniform(g, min_area, max_area) * h * w
    aspect = math.exp(_uniform(g, -math.log(3.0), math.log(3.0)))
    rh = min(h, max(1, round(math.sqrt(target / aspect))))
    rw = min(w, max(1, round(target / rh)))
    y0, x0 = _randint(g, 0, h - rh), _randint(g, 0, w - rw)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y0:y0 + rh, x0:x0 + rw] = True
    return mask


def random_ellipse(h: int, w: int, g: torch.Generator, min_area: float, max_area: float) -> torch.Tensor:
    """Rotated ellipse with a random aspect ratio, kept mostly inside the frame."""
    target = _uniform(g, min_area, max_area) * h * w
    aspect = math.exp(_uniform(g, -math.log(2.5), math.log(2.5)))
    ry = math.sqrt(target / (math.pi * aspect))
    rx = ry * aspect
    theta = _uniform(g, 0.0, math.pi)
    reach_y = min(h / 2, abs(ry * math.cos(theta)) + abs(rx * math.sin(theta)))
    reach_x = min(w / 2, abs(rx * math.cos(theta)) + abs(ry * math.sin(theta)))
    cy, cx = _uniform(g, reach_y, h - reach_y), _uniform(g, reach_x, w - reach_x)
    yy, xx = _grid(h, w)
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def random_brush(h: int, w: int, g: torch.Generator, min_area: float, max_area: float) -> torch.Tensor:
    """Free-hand brush stroke: a random walk of thick segments, grown until it reaches a target area."""
    target = _uniform(g, min_area, max_area) * h * w
    side = min(h, w)
    radius = max(0.75, _uniform(g, 0.04, 0.12) * side)
    yy, xx = _grid(h, w)
    mask = torch.zeros(h, w, dtype=torch.bool)
    py, px = _uniform(g, 0, h), _uniform(g, 0, w)
    angle = _uniform(g, 0, 2 * math.pi)
    for _ in range(64):
        angle += _uniform(g, -math.pi / 2, math.pi / 2)
        length = _uniform(g, 0.15, 0.4) * max(h, w)
        qy = min(max(py + length * math.sin(angle), 0.0), float(h))
        qx = min(max(px + length * math.cos(angle), 0.0), float(w))
        sy, sx = qy - py, qx - px
        seg2 = sy * sy + sx * sx
        t = ((yy - py) * sy + (xx - px) * sx) / seg2 if seg2 > 0 else torch.zeros_like(yy)
        t = t.clamp(0.0, 1.0)
        dist2 = (yy - (py + t * sy)) ** 2 + (xx - (px + t * sx)) ** 2
        mask |= dist2 <= radius * radius
        if int(mask.sum()) >= target:
            break
        if qy in (0.0, float(h)) or qx in (0.0, float(w)):
            angle += math.pi
        py, px = qy, qx
    return mask


_SHAPE_FNS = {"rect": random_rectangle, "ellipse": random_ellipse, "brush": random_brush}


def _fit_rectangle(h: int, w: int, g: torch.Generator, lo: int, hi: int) -> torch.Tensor:
    """Fallback: a rectangle whose cell count is guaranteed to lie in [lo, hi]."""
    sides = _rect_sides(h, w, lo, hi)
    rh, b_lo, b_hi = sides[_randint(g, 0, len(sides) - 1)]
    rw = _randint(g, b_lo, b_hi)
    y0, x0 = _randint(g, 0, h - rh), _randint(g, 0, w - rw)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y0:y0 + rh, x0:x0 + rw] = True
    return mask


def random_mask(
    grid: tuple[int, int, int],
    generator: torch.Generator,
    min_area: float = 0.05,
    max_area: float = 0.6,
    shapes: tuple[str, ...] = RANDOM_SHAPES,
) -> tuple[torch.Tensor, str]:
    """Random static shape mask [f, h, w] with area in [min_area, max_area]; returns (mask, shape name)."""
    f, h, w = grid
    lo, hi = _area_window(h, w, min_area, max_area)
    shape = shapes[_randint(generator, 0, len(shapes) - 1)]
    for _ in range(_MAX_TRIES):
        mask = _SHAPE_FNS[shape](h, w, generator, min_area, max_area)
        if lo <= int(mask.sum()) <= hi:
            break
    else:
        mask, shape = _fit_rectangle(h, w, generator, lo, hi), "rect"
    return mask.unsqueeze(0).expand(f, h, w).clone(), shape


def save_object_masks(path: str | os.PathLike, masks: torch.Tensor, names: list[str],
                      metadata: dict[str, Any] | None = None) -> Path:
    """Write one sample's object masks ([N, f, h, w] or [N, h, w]) with their names, atomically."""
    if masks.ndim not in (3, 4):
        raise ValueError(f"object masks must be [N, f, h, w] or [N, h, w], got {tuple(masks.shape)}")
    if masks.shape[0] != len(names):
        raise ValueError(f"{masks.shape[0]} masks but {len(names)} names")
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    meta["objects"] = json.dumps(list(names))
    meta["grid"] = json.dumps(list(masks.shape[1:]))
    return save_safetensors(path, {"masks": (masks > 0.5).to(torch.uint8)}, meta)


def load_object_masks(path: str | os.PathLike) -> ObjectMasks:
    """Read a per-sample object-mask file, validating that names and masks agree."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            if "masks" not in f.keys():
                raise ValueError(f"{path}: no `masks` tensor (keys: {list(f.keys())})")
            masks = f.get_tensor("masks")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: unreadable object-mask file ({e}); re-run the precompute step") from e
    try:
        names = json.loads(meta.get("objects", "null"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: `objects` metadata is not JSON") from e
    if masks.ndim == 3:
        masks = masks.unsqueeze(1)
    if masks.ndim != 4 or not isinstance(names, list) or len(names) != masks.shape[0]:
        raise ValueError(f"{path}: masks {tuple(masks.shape)} do not match object names {names!r}")
    return ObjectMasks(names=[str(n) for n in names], masks=masks.bool(), metadata=meta)


def resize_mask(mask: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a [h, w] or [f, h, w] mask to [f, h, w] (2-D masks repeat over frames)."""
    f, h, w = grid
    if mask.ndim == 2:
        if tuple(mask.shape) != (h, w):
            mask = F.interpolate(mask[None, None].float(), size=(h, w), mode="nearest")[0, 0]
        return mask.bool().unsqueeze(0).expand(f, h, w).clone()
    if tuple(mask.shape) != (f, h, w):
        mask = F.interpolate(mask[None, None].float(), size=(f, h, w), mode="nearest")[0, 0]
    return mask.bool()


class MaskSampler:
    """Draws training masks per the strategy config, reproducibly from a seeded generator."""

    def __init__(self, config: MaskStrategyConfig, library: MaskLibrary | None = None, seed: int = 0) -> None:
        """Set up the sources; `semantic` mode needs `semantic_mask_dir` or a library."""
        self.config = config
        self.library = library
        self.mask_dir = Path(config.semantic_mask_dir) if config.semantic_mask_dir else None
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise ValueError(f"semantic_mask_dir: {self.mask_dir} is not a directory")
        if config.mode == "semantic" and self.mask_dir is None and library is None:
            raise ValueError("mask mode 'semantic' needs semantic_mask_dir or a SemanticMaskLibrary")
        self.generator = torch.Generator().manual_seed(seed)
        self._objects: OrderedDict[str, ObjectMasks | None] = OrderedDict()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Generator state, for exact resume."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the generator state saved by `state_dict`."""
        self.generator.set_state(state["generator"])

    def object_masks(self, sample_id: str) -> ObjectMasks | None:
        """The precomputed object masks of a sample, or None when it has no file."""
        if self.mask_dir is None:
            return None
        if sample_id in self._objects:
            self._objects.move_to_end(sample_id)
            return self._objects[sample_id]
        path = self.mask_dir / f"{sample_id}.safetensors"
        found = load_object_masks(path) if path.is_file() else None
        self._objects[sample_id] = found
        if len(self._objects) > _OBJECT_CACHE:
            self._objects.popitem(last=False)
        return found

    def _random(self, grid: tuple[int, int, int], sample_id: str | None, fallback: bool = False) -> MaskDraw:
        """A random-shape draw."""
        cfg = self.config
        mask, shape = random_mask(grid, self.generator, cfg.min_area, cfg.max_area, cfg.shapes)
        return MaskDraw(mask, "random", shape, mask_area(mask), sample_id, fallback)

    def _semantic(self, grid: tuple[int, int, int], sample_id: str | None) -> MaskDraw:
        """An object-mask draw: the sample's own objects first, then the library, else a random fallback."""
        cfg = self.config
        objects = self.object_masks(sample_id) if sample_id is not None else None
        if objects is not None:
            resized = [resize_mask(m, grid) for m in objects.masks]
            valid = [i for i, m in enumerate(resized)
                     if cfg.object_min_area <= mask_area(m) <= cfg.object_max_area and m.any()]
            if valid:
                i = valid[_randint(self.generator, 0, len(valid) - 1)]
                return MaskDraw(resized[i], "object", objects.names[i], mask_area(resized[i]), sample_id)
        if self.library is not None and len(self.library) > 0:
            mask = resize_mask(self.library.sample(self.generator, grid[1:]), grid)
            if mask.any():
                return MaskDraw(mask, "library", "mulan", mask_area(mask), sample_id)
        return self._random(grid, sample_id, fallback=True)

    def sample(self, grid: tuple[int, int, int], sample_id: str | None = None) -> MaskDraw:
        """Draw one mask [f, h, w] for a sample per the configured mode (`mixed`: ratio object / rest random)."""
        mode = self.config.mode
        if mode == "random":
            return self._random(grid, sample_id)
        if mode == "semantic":
            return self._semantic(grid, sample_id)
        if _uniform(self.generator) < self.config.semantic_mask_ratio:
            return self._semantic(grid, sample_id)
        return self._random(grid, sample_id)
