"""Qwen-VL grounding: prompts, tolerant answer parsing, coordinate mapping and the DETECTIONS value type.

Qwen2.5-VL answers in absolute pixels of the image *as the processor resized it*; map back through the
processor's ``image_grid_thw`` (``x * W / (grid_w * patch)``). Qwen3-VL answers in relative 0..1000
coordinates (``x / 1000 * W``). Either way boxes are clamped to the frame, degenerate boxes are dropped (with a
DetectionsDroppedWarning) and duplicates (same label, IoU above a threshold) are merged.

Every JSON text (a model answer, a typed answer, a saved DETECTIONS value) is at most MAX_JSON_CHARS long and
nests at most MAX_JSON_DEPTH levels, checked before any JSON parser sees it. A grounding item that names a box
must give 4 finite numbers; a saved DETECTIONS value must match its schema exactly (`Detections.from_dict`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

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

MAX_JSON_CHARS = 1_000_000
MAX_JSON_DEPTH = 32
ANSWER_EXAMPLE = '[{"bbox_2d": [120, 80, 260, 240], "label": "cup"}]'
SAVED_EXAMPLE = ('{"width": 768, "height": 512, "num_frames": 121, "frames": {"0": [{"label": "cup", '
                 '"box": [120, 80, 260, 240], "score": null}]}}')
SAVED_KEYS = ("width", "height", "num_frames", "family", "frames", "raw")
_JSON_STRUCTURE = re.compile(r'[\[\]{}"\\]')


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


class DetectionsDroppedWarning(UserWarning):
    """Some boxes were left out (zero area after clamping to the frame); the message says which."""


class DetectionsFormatError(ValueError):
    """A saved DETECTIONS JSON value that does not match the schema; the message says where and shows the form."""

    def __init__(self, reason: str) -> None:
        """The reason, followed by an example of a valid value."""
        self.reason = reason
        super().__init__(f"{reason}. A saved detections value looks like {SAVED_EXAMPLE} (boxes are "
                         "[x1, y1, x2, y2] frame pixels with 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height; "
                         "keyframes count from 0)")


def json_depth(text: str, limit: int | None = None) -> int:
    """Deepest nesting of [ and { in a JSON text (brackets inside strings do not count); no parser runs.

    With a `limit`, counting stops at the first level beyond it (the answer is then limit + 1).
    """
    depth = deepest = 0
    in_string = False
    escaped_at = -1
    for match in _JSON_STRUCTURE.finditer(text):
        at, ch = match.start(), match.group()
        if in_string:
            if at == escaped_at:
                continue
            if ch == "\\":
                escaped_at = at + 1
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if limit is not None and deepest > limit:
                break
        elif ch in "]}":
            depth = max(depth - 1, 0)
    return deepest


def json_limit_problem(text: str) -> str | None:
    """Why a JSON text is too large or too deeply nested to read (None when it is within the limits)."""
    if len(text) > MAX_JSON_CHARS:
        return (f"the text is {len(text):,} characters long; at most {MAX_JSON_CHARS:,} are read (give fewer "
                "boxes or keyframes)")
    if json_depth(text, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        return (f"the JSON nests more than {MAX_JSON_DEPTH} levels deep, which no grounding answer or saved "
                "detections value needs (they nest 3 to 5 levels)")
    return None


def load_json(text: str, error: Callable[[str], Exception], invalid: str = "the text is not valid JSON") -> Any:
    """JSON text parsed within the size and nesting limits; a problem is raised as `error(reason)`, unparsable text
    as `invalid` and the parser's reason (one bounded reader for every JSON value a user gives)."""
    problem = json_limit_problem(text)
    if problem:
        raise error(problem)
    try:
        return json.loads(text)
    except ValueError as err:
        raise error(f"{invalid} ({err})") from err


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
    def from_dict(cls, data: Any, width: float | None = None, height: float | None = None,
                  where: str = "detection") -> Detection:
        """Inverse of `to_dict`, strict: a label, 4 finite numbers with x1 < x2 and y1 < y2 (inside the frame
        when its size is given), and a finite score or null; anything else is a DetectionsFormatError."""
        if not isinstance(data, Mapping):
            raise DetectionsFormatError(f"{where} is {_kind(data)}; write an object with 'label', 'box' and "
                                        "'score'")
        unknown = sorted(set(data) - {"label", "box", "score"})
        if unknown:
            raise DetectionsFormatError(f"{where} has unknown key(s) {unknown}; a detection has 'label', 'box' "
                                        "and 'score'")
        label = data.get("label")
        if not isinstance(label, str) or not label.strip():
            raise DetectionsFormatError(f"{where} has label {label!r}; write a non-empty string such as \"cup\"")
        where = f"{where} ({label!r})"
        box = data.get("box")
        if not isinstance(box, list) or len(box) != 4:
            raise DetectionsFormatError(f"{where} has box {_short(box)}; write 4 numbers [x1, y1, x2, y2]")
        coords = [json_number(v) for v in box]
        if any(c is None for c in coords):
            raise DetectionsFormatError(f"{where} has box {_short(box)} with a value that is not a finite number "
                                        "(NaN, Infinity, a string or too large)")
        x1, y1, x2, y2 = coords
        if not (x2 > x1 and y2 > y1):
            raise DetectionsFormatError(f"{where} has box {_short(box)} of size {x2 - x1:g} x {y2 - y1:g}; boxes "
                                        "need x2 > x1 and y2 > y1 (a positive width and height)")
        if width is not None and height is not None and not (0 <= x1 and x2 <= width and 0 <= y1 and y2 <= height):
            raise DetectionsFormatError(f"{where} has box {_short(box)} outside the {width:g}x{height:g} frame")
        score = data.get("score")
        value = None if score is None else json_number(score)
        if score is not None and value is None:
            raise DetectionsFormatError(f"{where} has score {_short(score)}; write a finite number or null")
        return cls(label, (x1, y1, x2, y2), value)


def _kind(value: Any) -> str:
    """A JSON type name for messages ('a list', 'a string', 'null', ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {_short(value)}"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), f"a {type(value).__name__}")


def _short(value: Any, limit: int = 80) -> str:
    """A JSON value as text for a message, cut to `limit` characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + " …"


def json_number(value: Any) -> float | None:
    """A finite float from a JSON number (not a boolean or a string), else None (strict parsing of saved values)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _whole(value: Any, name: str, minimum: int) -> int:
    """A JSON whole number >= minimum, else a DetectionsFormatError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DetectionsFormatError(f"'{name}' is {_short(value)}; write a whole number >= {minimum}")
    return value


def _keyframe(key: Any, num_frames: int | None, where: str) -> int:
    """A keyframe key of a saved value ("0", "24", ...): a whole number from 0, below num_frames when known."""
    text = str(key).strip()
    if not re.fullmatch(r"-?\d+", text):
        raise DetectionsFormatError(f"{where} has key {key!r}, which is not a frame number; write keys like \"0\"")
    k = int(text)
    if k < 0:
        raise DetectionsFormatError(f"{where} has keyframe {k}; keyframes count from 0 (the first frame)")
    if num_frames is not None and k >= num_frames:
        raise DetectionsFormatError(f"{where} has keyframe {k} but 'num_frames' is {num_frames} (valid: 0.."
                                    f"{num_frames - 1})")
    return k


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
    def from_dict(cls, data: Any) -> Detections:
        """Inverse of `to_dict`, strict: the schema of `SAVED_EXAMPLE` exactly, else a DetectionsFormatError."""
        if not isinstance(data, Mapping):
            raise DetectionsFormatError(f"the saved detections are {_kind(data)}, not an object")
        unknown = sorted(set(data) - set(SAVED_KEYS))
        if unknown:
            raise DetectionsFormatError(f"unknown key(s) {unknown}; saved detections have {list(SAVED_KEYS)}")
        missing = [k for k in ("width", "height", "frames") if k not in data]
        if missing:
            raise DetectionsFormatError(f"missing key(s) {missing}")
        width = _whole(data["width"], "width", 1)
        height = _whole(data["height"], "height", 1)
        num_frames = None if data.get("num_frames") is None else _whole(data["num_frames"], "num_frames", 1)
        family = data.get("family")
        if family is not None and not isinstance(family, str):
            raise DetectionsFormatError(f"'family' is {_short(family)}; write a string such as \"qwen2_5_vl\" or "
                                        "null")
        frames_in = data["frames"]
        if not isinstance(frames_in, Mapping):
            raise DetectionsFormatError(f"'frames' is {_kind(frames_in)}; write an object mapping keyframes to "
                                        "lists of detections")
        frames: dict[int, list[Detection]] = {}
        for key, items in frames_in.items():
            k = _keyframe(key, num_frames, "'frames'")
            if k in frames:
                raise DetectionsFormatError(f"keyframe {k} appears twice in 'frames' (as {key!r})")
            if not isinstance(items, list):
                raise DetectionsFormatError(f"keyframe {k} holds {_kind(items)}; write a list of detections")
            frames[k] = [Detection.from_dict(d, width, height, f"keyframe {k}, detection {i}")
                         for i, d in enumerate(items)]
        raw_in = {} if data.get("raw") is None else data["raw"]
        if not isinstance(raw_in, Mapping):
            raise DetectionsFormatError(f"'raw' is {_kind(raw_in)}; write an object mapping keyframes to answer "
                                        "strings, or leave it out")
        raw: dict[int, str] = {}
        for key, text in raw_in.items():
            k = _keyframe(key, num_frames, "'raw'")
            if not isinstance(text, str):
                raise DetectionsFormatError(f"'raw' keyframe {k} holds {_kind(text)}; write the answer as a string")
            raw[k] = text
        return cls(width, height, frames, num_frames, family, raw)

    def check_clip(self, frames: int) -> None:
        """Raise a ValueError unless every keyframe is a frame of a clip of `frames` frames."""
        outside = [k for k in self.keyframes if not 0 <= k < frames]
        if outside:
            raise ValueError(f"detections have keyframe {outside[0]} but the clip has only {frames} frames "
                             f"(keyframes must lie in 0..{frames - 1})")

    def to_json(self) -> str:
        """JSON text of `to_dict`."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Detections:
        """Inverse of `to_json`; the size, nesting and schema are checked (DetectionsFormatError)."""
        return cls.from_dict(load_json(text, DetectionsFormatError))


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


def _scan(text: str, start: int) -> tuple[str | None, int, list[str], bool, set[int]]:
    """Scan one JSON value from ``text[start]``, dropping trailing commas.

    Returns (cleaned complete value or None if it never closes, index just past it, the complete
    top-level-list items seen so far (cleaned), whether a mismatched bracket was met, and — for a value that
    never closes — the positions of the brackets inside it that never close either and hold no complete
    bracketed item: a scan from any of them would find nothing, so the caller skips them).
    """
    out: list[str] = []
    stack: list[str] = []
    opened: list[list[Any]] = []
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
            opened.append([i, False])
        elif ch in "]}":
            if not stack or stack[-1] != pairs[ch]:
                return None, i, items, True, set()
            stack.pop()
            opened.pop()
            if opened:
                opened[-1][1] = True
            if len(stack) == 1 and stack[0] == "[" and item_start is not None:
                out.append(ch)
                items.append("".join(out[item_start:]))
                item_start = None
                i += 1
                continue
            if not stack:
                out.append(ch)
                return "".join(out), i + 1, items, False, set()
        elif ch == ",":
            j = i + 1
            while j < n and text[j] in " \t\r\n":
                j += 1
            if j < n and text[j] in "]}":
                i += 1
                continue
        out.append(ch)
        i += 1
    return None, n, items, False, {at for at, has_item in opened if text[at] == "{" or not has_item}


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


class _BadItem(ValueError):
    """A grounding item that names a box (or a score) whose value is not usable; the message says why."""


def _item_to_detection(item: Any) -> Detection | None:
    """One parsed JSON item → Detection in model coordinates, or None when it carries no box.

    An object with a box key must give 4 finite numbers there (and a finite score, if any): anything else is a
    _BadItem, so a NaN, Infinity or overflowing coordinate is reported instead of silently dropped.
    """
    if isinstance(item, Mapping):
        box_key = next((k for k in BOX_KEYS if k in item), None)
        if box_key is None:
            return None
        box_value = item[box_key]
        label_value = next((item[k] for k in LABEL_KEYS if k in item and item[k] is not None), "object")
        score_key = next((k for k in SCORE_KEYS if k in item), None)
        score_value = item[score_key] if score_key is not None else None
        where = f"item {str(label_value).strip()[:40]!r}: \"{box_key}\""
    elif isinstance(item, Sequence) and not isinstance(item, str):
        box_value, label_value, score_value, score_key, where = item, "object", None, None, "box"
    else:
        return None
    if not isinstance(box_value, Sequence) or isinstance(box_value, str) or len(box_value) != 4:
        if isinstance(item, Mapping):
            raise _BadItem(f"{where} is {_short(box_value)}; write 4 numbers [x1, y1, x2, y2]")
        return None
    coords = [_number(v) for v in box_value]
    if any(c is None for c in coords):
        if isinstance(item, Mapping):
            raise _BadItem(f"{where} is {_short(box_value)}, which holds a value that is not a finite number "
                           "(NaN, Infinity, too large or not a number)")
        return None
    score = _number(score_value) if score_value is not None else None
    if score_value is not None and score is None:
        raise _BadItem(f"{where.split(':')[0]}: \"{score_key}\" is {_short(score_value)}; write a finite number")
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
    barren: set[int] = set()
    for start, ch in enumerate(body):
        if ch not in "[{" or start < resume:
            continue
        tried += 1
        if tried > MAX_JSON_STARTS:
            break
        if start in barren:
            cut = True
            continue
        complete, end, items, broken, never = _scan(body, start)
        barren |= never
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
    Raises DetectionParseError when no grounding JSON can be recovered, when the text is over MAX_JSON_CHARS or
    nests deeper than MAX_JSON_DEPTH, and when an item's box (or score) is not made of finite numbers.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected the model's answer as str; got {type(text).__name__}")
    problem = json_limit_problem(text)
    if problem:
        raise DetectionParseError(f"{problem}; write a JSON list like {ANSWER_EXAMPLE}", text)
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
        except _BadItem as err:
            raise DetectionParseError(f"{err}; write each box as 4 finite numbers, e.g. {ANSWER_EXAMPLE}",
                                      text) from err
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
    kept detections follows their first appearance. Each candidate is compared with the kept boxes of its label
    in one vectorised step (the same float64 arithmetic as `box_iou`), so thousands of boxes stay fast.
    """
    order = sorted(range(len(detections)),
                   key=lambda i: (-(detections[i].score if detections[i].score is not None else -math.inf), i))
    groups: dict[str, tuple[np.ndarray, list[int]]] = {}
    sizes: dict[str, int] = {}
    for d in detections:
        key = _label_key(d.label)
        sizes[key] = sizes.get(key, 0) + 1
    kept: list[int] = []
    for i in order:
        d = detections[i]
        key = _label_key(d.label)
        boxes, count = groups.setdefault(key, (np.empty((sizes[key], 4)), [0]))
        b = np.asarray(d.box, dtype=np.float64)
        held = boxes[:count[0]]
        if count[0]:
            iw = np.minimum(held[:, 2], b[2]) - np.maximum(held[:, 0], b[0])
            ih = np.minimum(held[:, 3], b[3]) - np.maximum(held[:, 1], b[1])
            inter = iw * ih
            union = (held[:, 2] - held[:, 0]) * (held[:, 3] - held[:, 1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            overlap = (iw > 0) & (ih > 0) & (union > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                iou = np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)
            if bool((iou > iou_threshold).any()):
                continue
        boxes[count[0]] = b
        count[0] += 1
        kept.append(i)
    return [detections[i] for i in sorted(kept)]


def to_frame_detections(raw: Sequence[Detection], family: str, frame_width: int, frame_height: int,
                        grid_thw: Sequence[int] | None = None, patch_size: int = 14, min_size: float = 1.0,
                        merge_iou: float | None = 0.7) -> list[Detection]:
    """Map model-coordinate detections to the frame, clamp, drop degenerate boxes and merge duplicates.

    Boxes with less than `min_size` pixels of width or height inside the frame are left out with one
    DetectionsDroppedWarning that counts them and names the first.
    """
    if not (frame_width > 0 and frame_height > 0):
        raise ValueError(f"the frame size must be positive; got {frame_width}x{frame_height}")
    if family not in FAMILIES:
        raise ValueError(f"unknown Qwen-VL family {family!r}; expected one of {FAMILIES}")
    if family == "qwen2_5_vl" and grid_thw is None:
        raise ValueError("Qwen2.5-VL coordinates need the processor's image_grid_thw to map back")
    out: list[Detection] = []
    dropped: list[Detection] = []
    for det in raw:
        if family == "qwen2_5_vl":
            box = qwen25_box_to_frame(det.box, grid_thw, frame_width, frame_height, patch_size)
        else:
            box = qwen3_box_to_frame(det.box, frame_width, frame_height)
        box = clamp_box(box, frame_width, frame_height)
        if is_degenerate(box, min_size):
            dropped.append(det)
            continue
        out.append(Detection(det.label, box, det.score))
    if dropped:
        first = dropped[0]
        message = (f"left out {len(dropped)} box(es) with less than {min_size:g} px of width or height inside the "
                   f"{frame_width}x{frame_height} frame, e.g. {first.label!r} "
                   f"[{', '.join(f'{v:g}' for v in first.box)}] in the answer's coordinates (a box outside the frame, or "
                   "with x1 = x2 or y1 = y2)")
        warnings.warn(message, DetectionsDroppedWarning, stacklevel=2)
    return merge_duplicates(out, merge_iou) if merge_iou is not None else out
