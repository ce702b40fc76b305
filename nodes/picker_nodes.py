"""The object picker: boxes and points picked on a keyframe (in the browser, or typed as JSON) → DETECTIONS.

The picks live in the node's `picks` STRING widget as JSON, so a saved workflow runs headless unchanged; the web
extension (web/js/picker.js) only edits that text. The node shows its keyframe on itself through its UI output
(key `editctrl_picker`, a temp PNG plus the frame size, which the extension draws in a DOM widget); with nothing
picked yet it sends that preview anyway and stops with a message saying what to do.

Boxes go through the core's strict `Detections.from_dict`, so the value is exactly what Detect Objects and
Detections From JSON produce and SAM Refine / Select Objects consume. SAM takes box prompts only, so a clicked point
becomes a square box of `point_size` pixels centred on it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from comfy_api.latest import io, ui

from ..editctrl_core.perception.detection import (
    Detections,
    DetectionsFormatError,
    clamp_box,
    is_degenerate,
    json_number,
    load_json,
)
from ..editctrl_core.perception.object_masks import object_tracks, preview_detections
from .common import CATEGORY
from .detection_nodes import DetectionsType, capped, check_images, describe_detections, frame_index, shown_text

log = logging.getLogger("editctrl")

PICKER = "EditCtrl Object Picker"
UI_KEY = "editctrl_picker"  # the UI output key the web extension reads (not "images": no duplicate canvas preview)
EVENT = "editctrl.picker"  # the preview sent before stopping on an empty pick list
PREVIEW_MAX_SIDE = 1280
PICK_KEYS = {"label", "box", "point"}
PICKS_EXAMPLE = ('{"width": 192, "height": 128, "picks": [{"label": "disc", "box": [40, 32, 136, 120]}, '
                 '{"label": "disc", "point": [88, 76]}]}')


class PicksError(ValueError):
    """The picks JSON does not match its form; the message says where and shows an example."""

    def __init__(self, reason: str) -> None:
        """The reason, followed by an example of a valid value."""
        super().__init__(f"{PICKER}: {reason}. Picks look like {PICKS_EXAMPLE} (frame pixels; a box is "
                         "[x1, y1, x2, y2], a point [x, y]; 'width'/'height' give the frame size the picks were made "
                         "on, and are optional)")


def _numbers(value: Any, count: int, where: str, form: str) -> list[float]:
    """Exactly `count` finite numbers, else a PicksError naming `where`."""
    if not isinstance(value, list) or len(value) != count:
        raise PicksError(f"{where} is {json.dumps(value)[:80]}; write {count} numbers {form}")
    numbers = [json_number(v) for v in value]
    if any(n is None for n in numbers):
        raise PicksError(f"{where} is {json.dumps(value)[:80]}, which holds a value that is not a finite number")
    return numbers  # type: ignore[return-value]


def parse_picks(text: str) -> tuple[list[dict[str, Any]], tuple[float, float] | None]:
    """The pick items and the frame size they were made on (None when not given) from the widget's JSON.

    Accepts a list of picks, or an object {"width", "height", "picks"}; each pick is {"label"?, "box"} or
    {"label"?, "point"}. Empty text means no picks.
    """
    if not text.strip():
        return [], None
    value = load_json(text, PicksError, "the picks are not valid JSON")
    size = None
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"width", "height", "picks"})
        if unknown:
            raise PicksError(f"unknown key(s) {unknown}; the picks object has 'width', 'height' and 'picks'")
        if ("width" in value) != ("height" in value):
            raise PicksError("give both 'width' and 'height' (the frame size the picks were made on), or neither")
        if "width" in value:
            w, h = json_number(value["width"]), json_number(value["height"])
            if w is None or h is None or w <= 0 or h <= 0:
                raise PicksError(f"'width'/'height' are {value['width']!r}/{value['height']!r}; write positive numbers")
            size = (w, h)
        value = value.get("picks", [])
    if not isinstance(value, list):
        raise PicksError(f"the picks are {type(value).__name__}; write a list of picks")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise PicksError(f"pick {i} is {json.dumps(item)[:80]}; write an object with 'box' or 'point'")
        unknown = sorted(set(item) - PICK_KEYS)
        if unknown:
            raise PicksError(f"pick {i} has unknown key(s) {unknown}; a pick has 'label' and 'box' or 'point'")
        if ("box" in item) == ("point" in item):
            raise PicksError(f"pick {i} must have exactly one of 'box' and 'point'")
        if "label" in item and (not isinstance(item["label"], str) or not item["label"].strip()):
            raise PicksError(f"pick {i} has label {item['label']!r}; write a non-empty string or leave it out")
    return value, size


def pick_boxes(picks: list[dict[str, Any]], size: tuple[float, float] | None, width: int, height: int,
               label: str, point_size: int) -> list[dict[str, Any]]:
    """Detection dicts (label, box in frame pixels, score None): picks scaled from `size` to the frame, points
    grown to `point_size` squares, boxes clamped to the frame; a box with no area inside it is an error."""
    sx, sy = (width / size[0], height / size[1]) if size else (1.0, 1.0)
    default = label.strip() or "object"
    out = []
    for i, pick in enumerate(picks):
        name = pick.get("label", default).strip()
        if "box" in pick:
            x1, y1, x2, y2 = _numbers(pick["box"], 4, f"pick {i} ({name!r}): 'box'", "[x1, y1, x2, y2]")
            box = (x1 * sx, y1 * sy, x2 * sx, y2 * sy)
        else:
            x, y = _numbers(pick["point"], 2, f"pick {i} ({name!r}): 'point'", "[x, y]")
            x, y = x * sx, y * sy
            if not (0 <= x <= width and 0 <= y <= height):
                raise PicksError(f"pick {i} ({name!r}) has point [{x:g}, {y:g}] outside the {width}x{height} frame")
            half = point_size / 2
            box = (x - half, y - half, x + half, y + half)
        box = clamp_box(box, width, height)
        if is_degenerate(box):
            raise PicksError(f"pick {i} ({name!r}) has box {list(pick.get('box', []))} with less than 1 px of width "
                             f"or height inside the {width}x{height} frame")
        out.append({"label": name, "box": [float(v) for v in box], "score": None})
    return out


def keyframe_preview(frame: torch.Tensor, max_side: int = PREVIEW_MAX_SIDE) -> torch.Tensor:
    """One frame [1,H,W,3] scaled down so its longer side is at most `max_side` (the browser maps clicks back)."""
    height, width = int(frame.shape[1]), int(frame.shape[2])
    scale = max_side / max(height, width)
    if scale >= 1:
        return frame
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return torch.nn.functional.interpolate(frame.movedim(-1, 1), size=size, mode="area").movedim(1, -1)


def picker_ui(frame: torch.Tensor, keyframe: int, frames: int, width: int, height: int) -> dict[str, Any]:
    """The `editctrl_picker` UI entry: the saved keyframe PNG (temp) and the frame geometry the picks refer to."""
    saved = ui.PreviewImage(keyframe_preview(frame)).as_dict()["images"][0]
    return {**saved, "keyframe": keyframe, "frames": frames, "width": width, "height": height}


def send_preview(node_id: str | None, entry: dict[str, Any], message: str) -> None:
    """Send the keyframe preview to the browser that queued the prompt (used when the node stops before output)."""
    if node_id is None:
        return
    try:
        from server import PromptServer  # ComfyUI's server module; absent when the node runs outside ComfyUI

        server = PromptServer.instance
        server.send_sync(EVENT, {"node": str(node_id), UI_KEY: [entry], "text": [message]}, server.client_id)
    except Exception as err:  # noqa: BLE001 - the preview is a convenience; the error below still explains
        log.debug("%s: could not send the keyframe preview: %s", PICKER, err)


class EditCtrlObjectPicker(io.ComfyNode):
    """Pick objects on a keyframe by dragging boxes or clicking points; outputs DETECTIONS for SAM Refine."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Frames, keyframe, the picks JSON (edited by the web extension), default label and point size."""
        return io.Schema(
            node_id="EditCtrlObjectPicker",
            display_name=PICKER,
            category=CATEGORY + "/objects",
            description="Drag a box or click a point on the keyframe shown on the node (after one run) to pick an "
                        "object; the picks are stored as JSON in 'picks', so the workflow also runs headless. "
                        "Outputs the same detections as Detect Objects, for SAM Refine or Select Objects.",
            inputs=[
                io.Image.Input("images", tooltip="The video frames [F,H,W,3]; the keyframe is shown for picking."),
                io.Int.Input("keyframe", default=0, min=-(2**20), max=2**20,
                             tooltip="The frame the picks are made on (negative counts from the end)."),
                io.String.Input("picks", multiline=True, default="[]",
                                tooltip="The picked boxes/points as JSON, written by dragging/clicking on the "
                                        "preview: " + PICKS_EXAMPLE),
                io.String.Input("label", default="object",
                                tooltip="Label of new picks (and of picks without one); same label = one object "
                                        "per pick, named label, label#2, …"),
                io.Int.Input("point_size", default=32, min=2, max=4096,
                             tooltip="A clicked point becomes a square box of this many pixels (SAM takes boxes)."),
            ],
            outputs=[DetectionsType.Output(display_name="detections",
                                           tooltip="The picked boxes on the keyframe, for SAM Refine / Select Objects."),
                     io.Image.Output(display_name="preview", tooltip="The keyframe with the picked boxes drawn on it."),
                     io.String.Output(display_name="objects",
                                      tooltip="The picked objects' names (label, label#2, …), comma-separated.")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images: torch.Tensor, keyframe: int, picks: str, label: str, point_size: int) -> io.NodeOutput:
        """Validate the picks, build DETECTIONS on the keyframe, and show the keyframe on the node."""
        frames, height, width = check_images(images, PICKER)
        k = frame_index(keyframe, frames)
        entry = picker_ui(images[k:k + 1], k, frames, width, height)
        items, size = parse_picks(picks)
        if not items:
            message = (f"nothing is picked yet: the keyframe {k} is now shown on the node; drag a box or click a "
                       "point on it, then run again (or write boxes into 'picks')")
            send_preview(cls.hidden.unique_id if cls.hidden is not None else None, entry, message)
            raise ValueError(f"{PICKER}: {message}")
        boxes = pick_boxes(items, size, width, height, label, point_size)
        value = {"width": width, "height": height, "num_frames": frames, "family": None,
                 "frames": {str(k): boxes}, "raw": {str(k): picks}}
        try:
            detections = Detections.from_dict(value)
        except DetectionsFormatError as err:
            raise PicksError(str(err)) from err
        notes: list[str] = []
        detections = capped(detections, notes)
        names = [t.name for t in object_tracks(detections)]
        preview = preview_detections(images, detections)
        summary = describe_detections(detections)
        log.info("%s: %s", PICKER, summary.splitlines()[0])
        shown = {UI_KEY: [entry], **shown_text(PICKER, summary, notes).as_dict()}
        return io.NodeOutput(detections, preview, ", ".join(names), ui=shown)


NODES = [EditCtrlObjectPicker]
