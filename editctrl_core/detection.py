"""Qwen-VL grounding: prompts, tolerant answer parsing, coordinate mapping and the DETECTIONS value type.

Qwen2.5-VL answers in absolute pixels of the image *as the processor resized it*; map back through the
processor's ``image_grid_thw`` (``x * W / (grid_w * patch)``). Qwen3-VL answers in relative 0..1000
coordinates (``x / 1000 * W``). Either way boxes are clamped to the frame, degenerate boxes are dropped and
duplicates (same label, IoU above a threshold) are merged.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]
Family = Literal["qwen2_5_vl", "qwen3_vl"]
PromptMode = Literal["all", "categories", "text"]

FAMILIES: tuple[str, ...] = ("qwen2_5_vl", "qwen3_vl")
PROMPT_MODES: tuple[str, ...] = ("all", "categories", "text")
QWEN3_COORD_SCALE = 1000.0
ERROR_PREFIX_CHARS = 300

BOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box", "bbox2d", "bounding_box")
LABEL_KEYS = ("label", "name", "category", "class", "object")
SCORE_KEYS = ("score", "confidence", "conf", "prob", "probability")


class DetectionParseError(ValueError):
    """The model's answer holds no usable JSON grounding result; the message shows the start of the text."""

    def __init__(self, reason: str, text: str) -> None:
        """Keep the reason and the raw text, and show a prefix of the text in the message."""
        self.reason = reason
        self.text = text
        prefix = text[:ERROR_PREFIX_CHARS]
        more = f" … (+{len(text) - ERROR_PREFIX_CHARS} chars)" if len(text) > ERROR_PREFIX_CHARS else ""
        super().__init__(f"{reason}. Model answer was: {prefix!r}{more}")


class DetectionTruncatedWarning(UserWarning):
    """The answer was cut off mid-list (max_new_tokens too small); only complete items were kept."""


@dataclass
class Detection:
    """One grounded object: label, box (x1, y1, x2, y2) in frame pixels, optional confidence score."""

    label: str
    box: Box
    score: float | None = None

    @property
    def width(self) -> float:
        """Box width in pixels."""
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        """Box height in pixels."""
        return self.box[3] - self.box[1]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form."""
        return {"label": self.label, "box": [float(v) for v in self.box], "score": self.score}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Detection:
        """Inverse of `to_dict`; validates the box."""
        box = data["box"]
        if not isinstance(box, Sequence) or len(box) != 4:
            raise ValueError(f"detection box must have 4 numbers; got {box!r}")
        score = data.get("score")
        return cls(str(data["label"]), tuple(float(v) for v in box), None if score is None else float(score))


@dataclass
class Detections:
    """The DETECTIONS value: per keyframe index, the objects found there, plus the frame size they refer to."""

    width: int
    height: int
    frames: dict[int, list[Detection]] = field(default_factory=dict)
    num_frames: int | None = None
    family: str | None = None
    raw: dict[int, str] = field(default_factory=dict)

    @property
    def keyframes(self) -> list[int]:
        """Sorted keyframe indices."""
        return sorted(self.frames)

    def labels(self) -> list[str]:
        """Distinct labels in first-seen order over sorted keyframes."""
        seen: dict[str, None] = {}
        for k in self.keyframes:
            for det in self.frames[k]:
                seen.setdefault(det.label, None)
        return list(seen)

    def count(self) -> int:
        """Total number of detections over all keyframes."""
        return sum(len(v) for v in self.frames.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form (keyframe keys become strings, as JSON requires)."""
        return {
            "width": self.width,
            "height": self.height,
            "num_frames": self.num_frames,
            "family": self.family,
            "frames": {str(k): [d.to_dict() for d in self.frames[k]] for k in self.keyframes},
            "raw": {str(k): v for k, v in sorted(self.raw.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Detections:
        """Inverse of `to_dict`."""
        frames = {int(k): [Detection.from_dict(d) for d in v] for k, v in data.get("frames", {}).items()}
        raw = {int(k): str(v) for k, v in data.get("raw", {}).items()}
        num_frames = data.get("num_frames")
        return cls(int(data["width"]), int(data["height"]), frames,
                   None if num_frames is None else int(num_frames), data.get("family"), raw)

    def to_json(self) -> str:
        """JSON text of `to_dict`."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Detections:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))


def _category_list(categories: Iterable[str]) -> list[str]:
    """Clean, non-empty, de-duplicated category names."""
    out: dict[str, None] = {}
    for c in categories:
        c = str(c).strip()
        if c:
            out.setdefault(c, None)
    if not out:
        raise ValueError("categories mode needs at least one non-empty category name")
    return list(out)


def grounding_prompt(family: str, mode: str = "all", categories: Iterable[str] | None = None,
                     text: str | None = None) -> str:
    """The official Qwen grounding prompt for a family and mode ('all' objects, a 'categories' list, free 'text')."""
    if family not in FAMILIES:
        raise ValueError(f"unknown Qwen-VL family {family!r}; expected one of {FAMILIES}")
    if mode not in PROMPT_MODES:
        raise ValueError(f"unknown prompt mode {mode!r}; expected one of {PROMPT_MODES}")
    if mode == "categories":
        cats = _category_list(categories or [])
        if family == "qwen2_5_vl":
            return ("Locate every item from the category list in the image and output the coordinates in JSON "
                    f"format. The category set includes {', '.join(cats)}.")
        return (f'Locate every instance that belongs to the following categories: "{", ".join(cats)}". '
                "Report bbox coordinates in JSON format.")
    if mode == "text":
        target = (text or "").strip()
        if not target:
            raise ValueError("text mode needs a non-empty description of what to locate")
    else:
        target = "object"
    if family == "qwen2_5_vl":
        return f"Outline the position of each {target} and output all the coordinates in JSON format."
    return f'Locate every instance of "{target}" in the image. Report bbox coordinates in JSON format.'


def _strip_fence(text: str) -> str:
    """Content of the first ``` fence (to its end, or to the end of the text if it was cut off)."""
    start = text.find("```")
    if start < 0:
        return text
    body_start = text.find("\n", start)
    header = text[start + 3: body_start if body_start >= 0 else len(text)].strip()
    if body_start < 0 or (header and not header.replace("_", "").isalnum()):
        body_start = start + 3
    end = text.find("```", body_start)
    return text[body_start + (1 if text[body_start:body_start + 1] == "\n" else 0): end if end >= 0 else len(text)]


def _scan(text: str, start: int) -> tuple[str | None, int, list[str], bool]:
    """Scan one JSON value from ``text[start]``, dropping trailing commas.

    Returns (cleaned complete value or None if it never closes, index just past it, the complete
    top-level-list items seen so far (cleaned), whether a mismatched bracket was met).
    """
    out: list[str] = []
    stack: list[str] = []
    items: list[str] = []
    item_start: int | None = None
    in_string = False
    escape = False
    pairs = {"]": "[", "}": "{"}
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if in_string:
            out.append(ch)
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
            i += 1
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            if len(stack) == 1 and stack[0] == "[":
                item_start = len(out)
            stack.append(ch)
        elif ch in "]}":
            if not stack or stack[-1] != pairs[ch]:
                return None, i, items, True
            stack.pop()
            if len(stack) == 1 and stack[0] == "[" and item_start is not None:
                out.append(ch)
                items.append("".join(out[item_start:]))
                item_start = None
                i += 1
                continue
            if not stack:
                out.append(ch)
                return "".join(out), i + 1, items, False
        elif ch == ",":
            j = i + 1
            while j < n and text[j] in " \t\r\n":
                j += 1
            if j < n and text[j] in "]}":
                i += 1
                continue
        out.append(ch)
        i += 1
    return None, n, items, False


def _number(value: Any) -> float | None:
    """A finite float from a JSON number or numeric string, else None."""
    if isinstance(value, bool):
        return None
    if not isinstance(value, (int, float, str)):
        return None
    try:
        v = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None


def _item_to_detection(item: Any) -> Detection | None:
    """One parsed JSON item → Detection in model coordinates, or None when it carries no 4-number box."""
    if isinstance(item, Mapping):
        box_value = next((item[k] for k in BOX_KEYS if k in item), None)
        if box_value is None:
            return None
        label_value = next((item[k] for k in LABEL_KEYS if k in item and item[k] is not None), "object")
        score_value = next((item[k] for k in SCORE_KEYS if k in item), None)
    elif isinstance(item, Sequence) and not isinstance(item, str):
        box_value, label_value, score_value = item, "object", None
    else:
        return None
    if not isinstance(box_value, Sequence) or isinstance(box_value, str) or len(box_value) != 4:
        return None
    coords = [_number(v) for v in box_value]
    if any(c is None for c in coords):
        return None
    score = _number(score_value) if score_value is not None else None
    return Detection(str(label_value).strip() or "object", tuple(coords), score)


def _collect(value: Any) -> list[Detection] | None:
    """Detections inside a parsed JSON value; None when the value has no grounding structure at all."""
    if isinstance(value, Mapping):
        det = _item_to_detection(value)
        if det is not None:
            return [det]
        found: list[Detection] | None = None
        for v in value.values():
            if isinstance(v, (list, dict)):
                sub = _collect(v)
                if sub is not None:
                    found = (found or []) + sub
        return found
    if isinstance(value, list):
        if not value:
            return []
        if len(value) == 4 and all(_number(v) is not None for v in value):
            return [_item_to_detection(value)]
        found = []
        structured = False
        for v in value:
            if isinstance(v, Mapping):
                det = _item_to_detection(v)
                if det is not None:
                    found.append(det)
                    structured = True
                    continue
            if isinstance(v, (list, dict)):
                sub = _collect(v)
                if sub is not None:
                    found.extend(sub)
                    structured = True
        return found if structured else None
    return None


def _loads(fragment: str) -> Any:
    """json.loads that reports failure as None."""
    try:
        return json.loads(fragment)
    except (ValueError, RecursionError):
        return None


MAX_JSON_STARTS = 64


def _has_mapping(value: Any) -> bool:
    """Whether a parsed JSON value contains a JSON object anywhere (a structured grounding item)."""
    if isinstance(value, Mapping):
        return True
    if isinstance(value, list):
        return any(_has_mapping(v) for v in value)
    return False


def _parse_body(body: str) -> tuple[list[Detection] | None, bool, bool]:
    """Collect detections from every top-level JSON value in `body`.

    Returns (detections, or None when no grounding structure was found; whether any detection comes from a
    cut-off value; whether a cut-off value was met). After an unclosed bracket, bare number lists are not
    trusted as boxes (they may be the first half of a cut-off item).
    """
    found: list[Detection] = []
    structured = False
    cut = False
    from_cut = False
    resume = 0
    tried = 0
    for start, ch in enumerate(body):
        if ch not in "[{" or start < resume:
            continue
        tried += 1
        if tried > MAX_JSON_STARTS:
            break
        complete, end, items, broken = _scan(body, start)
        if broken:
            continue
        if complete is None:
            cut = True
            if ch == "[":
                kept = [d for frag in items for d in (_collect(_loads(frag)) or [])]
                if kept:
                    return found + kept, True, True
            continue
        value = _loads(complete)
        if value is None or (cut and not _has_mapping(value)):
            continue
        dets = _collect(value)
        if dets is None:
            continue
        structured = True
        found.extend(dets)
        from_cut = from_cut or (cut and bool(dets))
        resume = end
    return (found if structured else None), from_cut, cut


def parse_grounding_answer(text: str) -> list[Detection]:
    """Parse a Qwen grounding answer into detections in *model* coordinates.

    Accepts fenced or bare JSON, surrounding prose, trailing commas, a single object or a list, and a list
    cut off by max_new_tokens (complete items are kept and a DetectionTruncatedWarning is issued).
    Raises DetectionParseError when no grounding JSON can be recovered.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected the model's answer as str; got {type(text).__name__}")
    bodies = [_strip_fence(text)]
    if bodies[0] != text:
        bodies.append(text)
    cut_off = False
    empty = False
    for body in bodies:
        try:
            dets, salvaged, cut = _parse_body(body)
        except RecursionError:
            continue
        if salvaged and dets:
            message = (f"Qwen-VL answer has an unclosed list or object (cut off by max_new_tokens?); kept "
                       f"the {len(dets)} complete item(s)")
            warnings.warn(message, DetectionTruncatedWarning, stacklevel=2)
            logger.warning(message)
            return dets
        if dets:
            return dets
        cut_off = cut_off or cut
        empty = empty or dets is not None
    if empty:
        return []
    if cut_off:
        raise DetectionParseError("the answer was cut off before any complete grounding item "
                                  "(raise max_new_tokens)", text)
    if not any(ch in "[{" for ch in text):
        raise DetectionParseError("no JSON list or object found in the answer", text)
    raise DetectionParseError("no grounding boxes (objects with a 4-number 'bbox_2d') found in the answer", text)


def qwen25_box_to_frame(box: Sequence[float], grid_thw: Sequence[int], frame_width: int, frame_height: int,
                        patch_size: int = 14) -> Box:
    """Map a Qwen2.5-VL box (absolute pixels of the resized input) back to frame pixels via image_grid_thw."""
    _, grid_h, grid_w = (int(v) for v in grid_thw)
    if grid_h <= 0 or grid_w <= 0 or patch_size <= 0:
        raise ValueError(f"invalid image grid {tuple(grid_thw)} / patch size {patch_size}")
    sx = frame_width / (grid_w * patch_size)
    sy = frame_height / (grid_h * patch_size)
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def qwen3_box_to_frame(box: Sequence[float], frame_width: int, frame_height: int,
                       scale: float = QWEN3_COORD_SCALE) -> Box:
    """Map a Qwen3-VL box (relative 0..1000) to frame pixels."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1 / scale * frame_width, y1 / scale * frame_height, x2 / scale * frame_width, y2 / scale * frame_height)


def clamp_box(box: Sequence[float], width: float, height: float) -> Box:
    """Order the corners and clamp the box to the frame [0, width] x [0, height]."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))


def is_degenerate(box: Sequence[float], min_size: float = 1.0) -> bool:
    """True when the box is narrower or shorter than `min_size` pixels."""
    return (box[2] - box[0]) < min_size or (box[3] - box[1]) < min_size


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _label_key(label: str) -> str:
    """Case- and space-insensitive label identity for duplicate merging."""
    return " ".join(label.lower().split())


def merge_duplicates(detections: Sequence[Detection], iou_threshold: float = 0.7) -> list[Detection]:
    """Merge detections of the same label whose IoU exceeds the threshold.

    The kept one is the highest-scoring (a missing score ranks lowest; ties keep the earlier); order of the
    kept detections follows their first appearance.
    """
    order = sorted(range(len(detections)),
                   key=lambda i: (-(detections[i].score if detections[i].score is not None else -math.inf), i))
    kept: list[int] = []
    for i in order:
        d = detections[i]
        if any(_label_key(detections[j].label) == _label_key(d.label) and box_iou(detections[j].box, d.box) > iou_threshold
               for j in kept):
            continue
        kept.append(i)
    return [detections[i] for i in sorted(kept)]


def to_frame_detections(raw: Sequence[Detection], family: str, frame_width: int, frame_height: int,
                        grid_thw: Sequence[int] | None = None, patch_size: int = 14, min_size: float = 1.0,
                        merge_iou: float | None = 0.7) -> list[Detection]:
    """Map model-coordinate detections to the frame, clamp, drop degenerate boxes and merge duplicates."""
    out: list[Detection] = []
    for det in raw:
        if family == "qwen2_5_vl":
            if grid_thw is None:
                raise ValueError("Qwen2.5-VL coordinates need the processor's image_grid_thw to map back")
            box = qwen25_box_to_frame(det.box, grid_thw, frame_width, frame_height, patch_size)
        elif family == "qwen3_vl":
            box = qwen3_box_to_frame(det.box, frame_width, frame_height)
        else:
            raise ValueError(f"unknown Qwen-VL family {family!r}; expected one of {FAMILIES}")
        box = clamp_box(box, frame_width, frame_height)
        if is_degenerate(box, min_size):
            logger.debug("dropping degenerate box %s for %r", box, det.label)
            continue
        out.append(Detection(det.label, box, det.score))
    return merge_duplicates(out, merge_iou) if merge_iou is not None else out
