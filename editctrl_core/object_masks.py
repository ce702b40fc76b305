"""Masks from detections: per-object box masks over all frames, object selection, mask algebra, morphology.

Objects and frames between keyframes (the rule used everywhere in this module and by `sam.refine`):

* Identity. Detections on different keyframes are the same object when they share a label (case- and
  space-insensitive) and the same rank among that label's boxes on their keyframe, ranked left to right by box
  centre. An object is named by its label, or ``"label#n"`` (n = 1, 2, …) when some keyframe shows several.
* Boxes between keyframes. Between two keyframes where an object appears its box is linearly interpolated;
  before its first / after its last keyframe the nearest box is held. So an object seen on any keyframe covers
  the whole clip (an edit mask errs on covering too much rather than too little).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .detection import Box, Detection, Detections
from .qwen import frame_to_uint8

PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (220, 64, 220), (0, 210, 210), (255, 128, 0),
    (160, 100, 255),
)


@dataclass
class ObjectTrack:
    """One object followed over keyframes: its display name, label, and box per keyframe (frame pixels)."""

    name: str
    label: str
    boxes: dict[int, Box] = field(default_factory=dict)
    scores: dict[int, float | None] = field(default_factory=dict)

    def box_at(self, frame: int) -> Box:
        """Box at any frame: interpolated between keyframes, held before the first and after the last."""
        keys = sorted(self.boxes)
        if not keys:
            raise ValueError(f"object {self.name!r} has no boxes")
        if frame <= keys[0]:
            return self.boxes[keys[0]]
        if frame >= keys[-1]:
            return self.boxes[keys[-1]]
        for a, b in zip(keys, keys[1:]):
            if a <= frame <= b:
                t = (frame - a) / (b - a)
                return tuple(pa + (pb - pa) * t for pa, pb in zip(self.boxes[a], self.boxes[b]))
        raise AssertionError("unreachable: frame lies between the first and last keyframe")


def _label_key(label: str) -> str:
    """Case- and space-insensitive label identity."""
    return " ".join(label.lower().split())


def object_tracks(detections: Detections) -> list[ObjectTrack]:
    """Group detections into objects across keyframes (same label, same left-to-right rank)."""
    per_label: dict[str, list[ObjectTrack]] = {}
    display: dict[str, str] = {}
    for k in detections.keyframes:
        by_label: dict[str, list[Detection]] = {}
        for det in detections.frames[k]:
            key = _label_key(det.label)
            display.setdefault(key, det.label.strip())
            by_label.setdefault(key, []).append(det)
        for key, dets in by_label.items():
            dets = sorted(dets, key=lambda d: ((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2))
            tracks = per_label.setdefault(key, [])
            for rank, det in enumerate(dets):
                if rank == len(tracks):
                    tracks.append(ObjectTrack(display[key], display[key]))
                tracks[rank].boxes[k] = tuple(float(v) for v in det.box)
                tracks[rank].scores[k] = det.score
    out: list[ObjectTrack] = []
    for key, tracks in per_label.items():
        if len(tracks) > 1:
            for n, track in enumerate(tracks, start=1):
                track.name = f"{display[key]}#{n}"
        out.extend(tracks)
    return out


def scale_box(box: Sequence[float], sx: float, sy: float) -> Box:
    """Scale a box's x by `sx` and y by `sy`."""
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def box_mask(box: Sequence[float], height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Float [H,W] mask with 1 on every pixel the box overlaps (pixel j spans [j, j+1))."""
    x1, y1, x2, y2 = (float(v) for v in box)
    xs = torch.arange(width, device=device, dtype=torch.float32)
    ys = torch.arange(height, device=device, dtype=torch.float32)
    cols = (xs + 1 > x1) & (xs < x2)
    rows = (ys + 1 > y1) & (ys < y2)
    return (rows[:, None] & cols[None, :]).float()


def objects_to_masks(detections: Detections, frames: int, height: int, width: int,
                     device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Per object name, a box-filled float mask [F,H,W] at pixel resolution, boxes held/interpolated over frames.

    Boxes are rescaled when (height, width) differs from the frame size the detections refer to.
    """
    if frames < 1 or height < 1 or width < 1:
        raise ValueError(f"need a positive clip shape; got frames={frames}, height={height}, width={width}")
    for k in detections.keyframes:
        if k >= frames:
            raise ValueError(f"detections have keyframe {k} but the clip has only {frames} frames")
    sx = width / detections.width
    sy = height / detections.height
    out: dict[str, torch.Tensor] = {}
    for track in object_tracks(detections):
        mask = torch.zeros(frames, height, width, device=device)
        for f in range(frames):
            mask[f] = box_mask(scale_box(track.box_at(f), sx, sy), height, width, device)
        out[track.name] = mask
    return out


def _words(text: str) -> set[str]:
    """Lower-case alphanumeric words of a text."""
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def _base_name(name: str) -> str:
    """Object name without its '#n' instance suffix."""
    return re.sub(r"#\d+$", "", name)


def select_objects(masks: Mapping[str, torch.Tensor], labels: Iterable[str] | None = None,
                   indices: Iterable[int] | None = None, text: str | None = None) -> dict[str, torch.Tensor]:
    """Pick objects by label, index or text; the criteria are OR-ed and the result keeps the order of `masks`.

    Label: exact, case-insensitive ('person' also matches 'person#2'). Index: position in `masks` (negative
    counts from the end). Text: the name's words all occur in `text` ('the red cup' picks 'cup'), or all of
    `text`'s words occur in the name ('glass' picks 'wine glass').
    """
    names = list(masks)
    chosen: set[str] = set()
    for label in labels or []:
        want = _label_key(label)
        hits = [n for n in names if _label_key(n) == want or _label_key(_base_name(n)) == want]
        if not hits:
            raise KeyError(f"no object labelled {label!r}; available: {names}")
        chosen.update(hits)
    for index in indices or []:
        if not -len(names) <= index < len(names):
            raise IndexError(f"object index {index} out of range for {len(names)} objects {names}")
        chosen.add(names[index])
    if text is not None and text.strip():
        words = _words(text)
        hits = [n for n in names
                if _words(_base_name(n)) and (_words(_base_name(n)) <= words or words <= _words(_base_name(n)))]
        if not hits:
            raise KeyError(f"no object matches {text!r}; available: {names}")
        chosen.update(hits)
    return {n: masks[n] for n in names if n in chosen}


def _check_same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Raise unless two masks have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")


def mask_union(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pixel-wise max (soft union) of two masks."""
    _check_same(a, b)
    return torch.maximum(a, b)


def mask_intersect(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pixel-wise min (soft intersection) of two masks."""
    _check_same(a, b)
    return torch.minimum(a, b)


def mask_subtract(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a` with `b` removed: a * (1 - b), clamped to [0, 1]."""
    _check_same(a, b)
    return (a * (1 - b)).clamp(0, 1)


def union_masks(masks: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
    """Union of several masks of one shape (e.g. the selected objects)."""
    items = list(masks.values()) if isinstance(masks, Mapping) else list(masks)
    if not items:
        raise ValueError("union of no masks: select at least one object")
    out = items[0].clone()
    for m in items[1:]:
        out = mask_union(out, m)
    return out


def _as_batch(mask: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """[H,W] or [F,H,W] (or [B,F,H,W]) mask as [N,1,H,W] float, plus the original shape."""
    if mask.ndim < 2:
        raise ValueError(f"mask must be at least [H,W]; got shape {tuple(mask.shape)}")
    shape = tuple(mask.shape)
    return mask.reshape(-1, 1, shape[-2], shape[-1]).float(), shape


def dilate_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow a mask by `pixels` in every direction (square structuring element, max-pool); negative erodes."""
    if pixels < 0:
        return erode_mask(mask, -pixels)
    if pixels == 0:
        return mask.clone()
    x, shape = _as_batch(mask)
    k = 2 * pixels + 1
    return F.max_pool2d(x, kernel_size=k, stride=1, padding=pixels).reshape(shape).to(mask.dtype)


def erode_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Shrink a mask by `pixels` (square structuring element, min-pool); the frame border does not erode."""
    if pixels < 0:
        return dilate_mask(mask, -pixels)
    if pixels == 0:
        return mask.clone()
    x, shape = _as_batch(mask)
    k = 2 * pixels + 1
    return (-F.max_pool2d(-x, kernel_size=k, stride=1, padding=pixels)).reshape(shape).to(mask.dtype)


def keyframe_boxes(tracks: Sequence[ObjectTrack]) -> dict[int, list[Box | None]]:
    """Box prompts per keyframe aligned by object: entry i of every keyframe's list is track i (None if absent)."""
    keys = sorted({k for t in tracks for k in t.boxes})
    return {k: [t.boxes.get(k) for t in tracks] for k in keys}


def tracks_for(detections: Detections, names: Iterable[str] | None = None) -> list[ObjectTrack]:
    """The object tracks of `detections`, restricted to the given object names (all when None)."""
    tracks = object_tracks(detections)
    if names is None:
        return tracks
    wanted = list(names)
    by_name = {t.name: t for t in tracks}
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise KeyError(f"unknown object(s) {missing}; available: {list(by_name)}")
    return [by_name[n] for n in wanted]


def preview_detections(frames: torch.Tensor, detections: Detections, line_width: int = 2) -> torch.Tensor:
    """Keyframes [K,H,W,3] (float 0..1) with each object's box outlined and named, one colour per object."""
    from PIL import Image, ImageDraw

    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [F,H,W,3]; got shape {tuple(frames.shape)}")
    height, width = int(frames.shape[1]), int(frames.shape[2])
    sx = width / detections.width
    sy = height / detections.height
    tracks = object_tracks(detections)
    images = []
    for k in detections.keyframes:
        if k >= frames.shape[0]:
            raise ValueError(f"detections have keyframe {k} but the clip has only {frames.shape[0]} frames")
        image = Image.fromarray(frame_to_uint8(frames[k]))
        draw = ImageDraw.Draw(image)
        for index, track in enumerate(tracks):
            if k not in track.boxes:
                continue
            colour = PALETTE[index % len(PALETTE)]
            x1, y1, x2, y2 = scale_box(track.boxes[k], sx, sy)
            draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=colour, width=line_width)
            draw.text((x1 + line_width + 1, y1 + line_width), track.name, fill=colour)
        images.append(torch.from_numpy(np.asarray(image).copy()).float() / 255.0)
    if not images:
        return frames[:1].clone()
    return torch.stack(images)
