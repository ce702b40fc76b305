"""Masks from detections: per-object box masks over all frames, object selection, mask algebra, morphology.

Objects and frames between keyframes (the rule used everywhere in this module and by `sam.refine`):

* Identity. Detections on different keyframes are the same object when they share a label (case- and
  space-insensitive) and the same rank among that label's boxes on their keyframe, ranked left to right by box
  centre. An object is named by its label, or ``"label#n"`` (n = 1, 2, …) when some keyframe shows several.
* Boxes between keyframes. Between two keyframes where an object appears its box is linearly interpolated;
  before its first / after its last keyframe the nearest box is held. So an object seen on any keyframe covers
  the whole clip (an edit mask errs on covering too much rather than too little).
* Bounded memory. Detections stay boxes until a mask is asked for, and then only the selected objects are
  drawn: `union_box_mask` fills one [F,H,W] mask box by box, whatever the number of objects. A DETECTIONS value
  holds at most MAX_OBJECTS objects (`cap_objects` keeps each label's leftmost objects, labels taking turns).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import check_finite_value
from .detection import Box, Detection, Detections
from .qwen import frame_to_uint8

MAX_OBJECTS = 256
T = TypeVar("T")

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
        at = bisect.bisect_left(keys, frame)
        if keys[at] == frame:
            return self.boxes[frame]
        a, b = keys[at - 1], keys[at]
        t = (frame - a) / (b - a)
        return tuple(pa + (pb - pa) * t for pa, pb in zip(self.boxes[a], self.boxes[b]))


def _label_key(label: str) -> str:
    """Case- and space-insensitive label identity."""
    return " ".join(label.lower().split())


def _left_to_right(dets: Iterable[Detection]) -> list[Detection]:
    """Detections ordered by box centre, left to right (then top to bottom): their rank within a label."""
    return sorted(dets, key=lambda d: ((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2))


def _tracks_by_label(detections: Detections) -> dict[str, list[ObjectTrack]]:
    """Per label key (first-seen order), its objects by left-to-right rank; names not yet numbered."""
    per_label: dict[str, list[ObjectTrack]] = {}
    display: dict[str, str] = {}
    for k in detections.keyframes:
        by_label: dict[str, list[Detection]] = {}
        for det in detections.frames[k]:
            key = _label_key(det.label)
            display.setdefault(key, det.label.strip())
            by_label.setdefault(key, []).append(det)
        for key, dets in by_label.items():
            tracks = per_label.setdefault(key, [])
            for rank, det in enumerate(_left_to_right(dets)):
                if rank == len(tracks):
                    tracks.append(ObjectTrack(display[key], display[key]))
                tracks[rank].boxes[k] = tuple(float(v) for v in det.box)
                tracks[rank].scores[k] = det.score
    for key, tracks in per_label.items():
        if len(tracks) > 1:
            for n, track in enumerate(tracks, start=1):
                track.name = f"{display[key]}#{n}"
    return per_label


def object_tracks(detections: Detections) -> list[ObjectTrack]:
    """Group detections into objects across keyframes (same label, same left-to-right rank)."""
    return [track for tracks in _tracks_by_label(detections).values() for track in tracks]


def cap_objects(detections: Detections, limit: int = MAX_OBJECTS) -> tuple[Detections, list[str]]:
    """At most `limit` objects: each label's leftmost objects, labels taking turns; plus the dropped names.

    Dropping a label's rightmost objects keeps the left-to-right rank, hence the identity, of every kept one.
    """
    if limit < 1:
        raise ValueError(f"the object limit must be at least 1; got {limit}")
    per_label = _tracks_by_label(detections)
    if sum(len(tracks) for tracks in per_label.values()) <= limit:
        return detections, []
    order = sorted((rank, i) for i, tracks in enumerate(per_label.values()) for rank in range(len(tracks)))
    keep = {key: 0 for key in per_label}
    keys = list(per_label)
    for rank, i in order[:limit]:
        keep[keys[i]] = rank + 1
    frames: dict[int, list[Detection]] = {}
    for k in detections.keyframes:
        by_label: dict[str, list[Detection]] = {}
        for det in detections.frames[k]:
            by_label.setdefault(_label_key(det.label), []).append(det)
        allowed: set[int] = set()
        for key, dets in by_label.items():
            allowed.update(id(d) for d in _left_to_right(dets)[:keep[key]])
        frames[k] = [det for det in detections.frames[k] if id(det) in allowed]
    dropped = [track.name for key, tracks in per_label.items() for track in tracks[keep[key]:]]
    return dataclasses.replace(detections, frames=frames), dropped


def cap_notice(kept: int, dropped: Sequence[str], shown: int = 8) -> str:
    """The sentence a node shows when `cap_objects` dropped objects (empty when nothing was dropped)."""
    if not dropped:
        return ""
    names = ", ".join(dropped[:shown]) + (f", … (+{len(dropped) - shown} more)" if len(dropped) > shown else "")
    return (f"kept {kept} of {kept + len(dropped)} objects (at most {MAX_OBJECTS}: each object is a mask and a SAM "
            f"pass; each label keeps its leftmost objects); dropped {len(dropped)}: {names}. Ask for fewer objects "
            "(prompt_mode 'categories' or 'text', or fewer boxes in the JSON)")


def scale_box(box: Sequence[float], sx: float, sy: float) -> Box:
    """Scale a box's x by `sx` and y by `sy`."""
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def _span(lo: float, hi: float, size: int) -> tuple[int, int]:
    """Pixels [start, stop) that the interval (lo, hi) overlaps on an axis of `size` pixels, pixel j being [j, j+1).

    Edges are compared in float32, as a float32 pixel grid would compare them, so every mask drawn from a box
    agrees pixel for pixel.
    """
    lo32 = float(np.float32(min(max(lo, -1.0), size + 1.0)))
    hi32 = float(np.float32(min(max(hi, -1.0), size + 1.0)))
    start = min(max(math.floor(lo32), 0), size)
    return start, min(max(math.ceil(hi32), start), size)


def _fill_box(mask: torch.Tensor, box: Sequence[float]) -> None:
    """Set to 1 every pixel of a [H,W] mask that the box overlaps."""
    x1, y1, x2, y2 = (check_finite_value("box coordinate", v) for v in box)
    c0, c1 = _span(x1, x2, mask.shape[-1])
    r0, r1 = _span(y1, y2, mask.shape[-2])
    mask[r0:r1, c0:c1] = 1


def box_mask(box: Sequence[float], height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Float [H,W] mask with 1 on every pixel the box overlaps (pixel j spans [j, j+1))."""
    mask = torch.zeros(height, width, device=device)
    _fill_box(mask, box)
    return mask


def _check_shape(frames: int, height: int, width: int) -> None:
    """Raise unless the clip shape is positive."""
    if frames < 1 or height < 1 or width < 1:
        raise ValueError(f"need a positive clip shape; got frames={frames}, height={height}, width={width}")


def _draw_track(out: torch.Tensor, track: ObjectTrack, sx: float, sy: float) -> None:
    """Add one object's box on every frame of `out` [F,H,W] (boxes held/interpolated, scaled by sx, sy)."""
    for f in range(out.shape[0]):
        _fill_box(out[f], scale_box(track.box_at(f), sx, sy))


def union_box_mask(detections: Detections, frames: int, height: int, width: int, names: Iterable[str] | None = None,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """The union [F,H,W] of the named objects' box masks (all objects when None), drawn into one mask.

    Equal to `union_masks(objects_to_masks(...))` of the same objects, but its memory is one mask whatever the
    number of objects.
    """
    _check_shape(frames, height, width)
    detections.check_clip(frames)
    out = torch.zeros(frames, height, width, device=device)
    for track in tracks_for(detections, names):
        _draw_track(out, track, width / detections.width, height / detections.height)
    return out


def objects_to_masks(detections: Detections, frames: int, height: int, width: int,
                     device: torch.device | str | None = None,
                     names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Per object name, a box-filled float mask [F,H,W] at pixel resolution, boxes held/interpolated over frames.

    Only the named objects are drawn (all when None), at most MAX_OBJECTS of them: each mask is F*H*W floats, so
    select first (`select_objects` on `object_tracks`) or take the union with `union_box_mask`. Boxes are
    rescaled when (height, width) differs from the frame size the detections refer to.
    """
    _check_shape(frames, height, width)
    detections.check_clip(frames)
    tracks = tracks_for(detections, names)
    if len(tracks) > MAX_OBJECTS:
        raise ValueError(f"{len(tracks)} objects would need {len(tracks)} masks of {frames}x{height}x{width} "
                         f"({len(tracks) * frames * height * width * 4 / 2**30:.1f} GiB); at most {MAX_OBJECTS} are "
                         "drawn at once: select objects first, cap them with cap_objects, or use union_box_mask")
    out: dict[str, torch.Tensor] = {}
    for track in tracks:
        mask = torch.zeros(frames, height, width, device=device)
        _draw_track(mask, track, width / detections.width, height / detections.height)
        out[track.name] = mask
    return out


def _words(text: str) -> set[str]:
    """Lower-case alphanumeric words of a text."""
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def _base_name(name: str) -> str:
    """Object name without its '#n' instance suffix."""
    return re.sub(r"#\d+$", "", name)


def select_objects(masks: Mapping[str, T], labels: Iterable[str] | None = None,
                   indices: Iterable[int] | None = None, text: str | None = None) -> dict[str, T]:
    """Pick objects by label, index or text; the criteria are OR-ed and the result keeps the order of `masks`.

    `masks` maps object names to anything: masks, or `ObjectTrack`s so that no mask is drawn before selection.

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


def _morph(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Max-pool over a (2|pixels|+1)² square: grows for `pixels` > 0, shrinks (min-pool) for < 0; the frame border
    does not erode (max_pool2d pads with -inf)."""
    if pixels == 0:
        return mask.clone()
    x, shape = _as_batch(mask)
    sign = 1.0 if pixels > 0 else -1.0
    r = abs(pixels)
    return (sign * F.max_pool2d(sign * x, kernel_size=2 * r + 1, stride=1, padding=r)).reshape(shape).to(mask.dtype)


def dilate_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow a mask by `pixels` in every direction (square structuring element, max-pool); negative erodes."""
    return _morph(mask, pixels)


def erode_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Shrink a mask by `pixels` (square structuring element, min-pool); the frame border does not erode."""
    return _morph(mask, -pixels)


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
    detections.check_clip(int(frames.shape[0]))
    sx = width / detections.width
    sy = height / detections.height
    tracks = object_tracks(detections)
    images = []
    for k in detections.keyframes:
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
