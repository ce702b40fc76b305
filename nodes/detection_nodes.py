"""Objects: Qwen-VL loading and grounding on keyframes, detections from JSON, object selection (thin nodes over
`editctrl_core.perception.qwen`, `detection`, `object_masks`); SAM silhouettes, mask algebra and TMA tokens live beside it."""

from __future__ import annotations

import json
import logging
import re
import time
import warnings
from typing import Any

import torch
from comfy_api.latest import io, ui

from ..editctrl_core.perception import qwen as qwen_core
from ..editctrl_core.perception.detection import (
    ANSWER_EXAMPLE,
    PROMPT_MODES,
    SAVED_EXAMPLE,
    DetectionParseError,
    Detections,
    DetectionsFormatError,
    json_limit_problem,
    parse_grounding_answer,
    to_frame_detections,
)
from ..editctrl_core.perception.object_masks import (
    cap_notice,
    cap_objects,
    object_tracks,
    preview_detections,
    select_objects,
    union_box_mask,
)
from .common import CATEGORY, Progress, check_interrupt, notice, pick_device
from .model_folders import LLM_FOLDER, mark_offload_after_use, model_folders, release, resolve_model_folder

log = logging.getLogger("editctrl")

QwenType = io.Custom("EDITCTRL_QWEN")
DetectionsType = io.Custom("EDITCTRL_DETECTIONS")

TINY_QWEN = ("tiny", "tiny-qwen2_5_vl", "tiny-qwen3_vl")
DTYPES = ["auto", "float32", "bfloat16", "float16"]
DEVICES = ["auto", "cpu", "cuda"]
SELECT_BY = ["label", "index", "text", "all"]
ON_PARSE_ERROR = ["error", "skip keyframe"]
COORDINATES = {
    # name: (family whose mapping applies, image grid (t, h, w) or None for the frame size, patch size)
    "pixels": ("qwen2_5_vl", None, 1),
    "relative 0-1000 (Qwen3-VL)": ("qwen3_vl", None, 1),
    "relative 0-1": ("qwen2_5_vl", (1, 1, 1), 1),
}
DETECT = "EditCtrl Detect"
FROM_JSON = "EditCtrl Detections From JSON"
SHOWN_ITEMS = 32

def frame_index(value: int, frames: int) -> int:
    """A keyframe index (negative counts from the end) checked against the clip length."""
    index = value + frames if value < 0 else value
    if not 0 <= index < frames:
        raise ValueError(f"keyframe {value} is outside the clip of {frames} frames (valid: 0..{frames - 1}, "
                         "or negative from the end)")
    return index


def parse_keyframes(text: str, frames: int) -> list[int]:
    """Sorted unique keyframe indices from a comma/space separated list such as '0, 12, -1'."""
    keys: set[int] = set()
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        try:
            value = int(part)
        except ValueError as err:
            raise ValueError(f"keyframe list {text!r}: {part!r} is not a frame number; write e.g. '0, 12, 24'") from err
        keys.add(frame_index(value, frames))
    return sorted(keys)


def choose_keyframes(count: int, indices: str, frames: int) -> list[int]:
    """Explicit indices when given, else `count` frames spread evenly over the clip (first and last included)."""
    if indices.strip():
        keys = parse_keyframes(indices, frames)
        if keys:
            return keys
    return qwen_core.evenly_spaced(frames, count)


def check_images(images: torch.Tensor, who: str) -> tuple[int, int, int]:
    """(frames, height, width) of an IMAGE batch, or a clear error."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
        raise ValueError(f"{who}: images must be an IMAGE batch [frames, height, width, 3]; got {tuple(images.shape)}")
    return int(images.shape[0]), int(images.shape[1]), int(images.shape[2])


def _listing(items: list[str], shown: int = SHOWN_ITEMS) -> str:
    """Comma-separated items, the first `shown` of them and how many more there are."""
    more = f", … (+{len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def describe_detections(detections: Detections) -> str:
    """Human-readable summary: objects, then the boxes on each keyframe (long lists shortened)."""
    names = [t.name for t in object_tracks(detections)]
    lines = [f"{detections.count()} detection(s) on keyframes [{_listing([str(k) for k in detections.keyframes])}] "
             f"({detections.width}x{detections.height}); objects: {_listing(names) or 'none'}"]
    keys = detections.keyframes
    for k in keys[:SHOWN_ITEMS]:
        items = [f"{d.label} [{d.box[0]:.0f}, {d.box[1]:.0f}, {d.box[2]:.0f}, {d.box[3]:.0f}]"
                 for d in detections.frames[k]]
        lines.append(f"keyframe {k}: {_listing(items) or 'nothing'}")
    if len(keys) > SHOWN_ITEMS:
        lines.append(f"… (+{len(keys) - SHOWN_ITEMS} more keyframes)")
    return "\n".join(lines)


def shown_text(node: str, summary: str, notes: list[str]) -> ui.PreviewText:
    """The node's UI text: the summary, then each notice as a 'warning:' line (notices are also logged)."""
    extra = notice(node, [f"warning: {n}" for n in notes])
    return ui.PreviewText(summary if extra is None else f"{summary}\n{extra.value}")


def detections_ui(images: torch.Tensor, detections: Detections, node: type[io.ComfyNode], name: str,
                  notes: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
    """The labelled-box preview [K,H,W,3] and a UI dict that shows it with the summary and the notices."""
    preview = preview_detections(images, detections)
    shown = ui.PreviewImage(preview, cls=node).as_dict()
    shown.update(shown_text(name, describe_detections(detections), notes).as_dict())
    return preview, shown


def capped(detections: Detections, notes: list[str]) -> Detections:
    """The detections cut to MAX_OBJECTS objects; a notice joins `notes` when some were dropped."""
    kept, dropped = cap_objects(detections)
    if dropped:
        notes.append(cap_notice(len(object_tracks(kept)), dropped))
    return kept


def selected_objects(detections: Detections, images: torch.Tensor, select_by: str, selection: str,
                     who: str) -> list[str]:
    """Names of the selected objects (no mask is drawn yet); errors name the available objects."""
    frames, _, _ = check_images(images, who)
    if detections.count() == 0:
        raise ValueError(f"{who}: no objects were detected on keyframes {detections.keyframes}, so there is nothing "
                         "to select; check the detection preview (other prompt, more keyframes) or give boxes with "
                         "EditCtrl Detections From JSON")
    try:
        detections.check_clip(frames)
    except ValueError as err:
        raise ValueError(f"{who}: {err}; connect the same video the detections were made on") from err
    tracks = {t.name: t for t in object_tracks(detections)}
    names = list(tracks)
    if select_by == "all":
        return names
    if select_by not in SELECT_BY:
        raise ValueError(f"{who}: select_by must be one of {SELECT_BY}; got {select_by!r}")
    items = [s.strip() for s in re.split(r"[,;\n]", selection) if s.strip()]
    if not items:
        raise ValueError(f"{who}: the selection is empty; write the {select_by}(s) to edit, or use select_by 'all'. "
                         f"Available objects: {names}")
    try:
        if select_by == "label":
            chosen = select_objects(tracks, labels=items)
        elif select_by == "index":
            try:
                indices = [int(s) for part in items for s in part.split()]
            except ValueError as err:
                raise ValueError(f"{who}: index selection {selection!r} must be numbers like '0, 2'; "
                                 f"available objects (in index order): {names}") from err
            chosen = select_objects(tracks, indices=indices)
        else:
            chosen = select_objects(tracks, text=selection)
    except (KeyError, IndexError) as err:
        raise ValueError(f"{who}: {err.args[0]}") from err
    return list(chosen)


class EditCtrlQwenVLLoader(io.ComfyNode):
    """Load Qwen2.5-VL / Qwen3-VL (transformers folder in models/LLM) or the tiny test preset."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Model choice, dtype, device, offloading."""
        return io.Schema(
            node_id="EditCtrlQwenVLLoader",
            display_name="EditCtrl Load Qwen-VL",
            category=CATEGORY + "/objects",
            description="Qwen-VL for object grounding and TMA semantic tokens.",
            inputs=[
                io.Combo.Input("model", options=[*TINY_QWEN, *model_folders(LLM_FOLDER)],
                               default=next(iter(model_folders(LLM_FOLDER)), "tiny"),
                               tooltip="A Qwen2.5-VL or Qwen3-VL folder under models/LLM (transformers layout, e.g. "
                                       "Qwen2.5-VL-7B-Instruct), or a tiny preset with random weights for tests."),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="'auto' = bfloat16 on a GPU that supports it, else float32."),
                io.Combo.Input("device", options=DEVICES, default="auto", tooltip="auto: ComfyUI's device (the GPU when there is one)."),
                io.Boolean.Input("offload_after_use", default=True,
                                 tooltip="Move the weights to the CPU after each use, freeing GPU memory for LTX-2."),
            ],
            outputs=[QwenType.Output(display_name="qwen", tooltip="For Detect Objects and TMA Tokens.")],
        )

    @classmethod
    def execute(cls, model: str, dtype: str, device: str, offload_after_use: bool) -> io.NodeOutput:
        """Load the preset or folder."""
        dev = pick_device(device)
        start = time.perf_counter()
        if model in TINY_QWEN:
            qwen = qwen_core.load_or_tiny(model, device=dev)
        else:
            qwen = qwen_core.load_qwen_vl(resolve_model_folder(LLM_FOLDER, model), device=dev, dtype=dtype)
        if offload_after_use:
            mark_offload_after_use(qwen)
        log.info("EditCtrl: loaded Qwen-VL %s (%s, %s, %s) in %.1fs", qwen.name, qwen.family, qwen.dtype,
                 qwen.device, time.perf_counter() - start)
        return io.NodeOutput(qwen)


class EditCtrlDetectObjects(io.ComfyNode):
    """Ground objects with Qwen-VL on keyframes: boxes per keyframe, and a preview of the labelled boxes."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Qwen, frames, prompt and keyframes."""
        return io.Schema(
            node_id="EditCtrlDetectObjects",
            display_name="EditCtrl Detect Objects (Qwen-VL)",
            category=CATEGORY + "/objects",
            description="Runs Qwen-VL's official grounding prompt on keyframes and parses the JSON boxes.",
            inputs=[
                QwenType.Input("qwen", tooltip="From EditCtrl Load Qwen-VL."),
                io.Image.Input("images", tooltip="The video frames [F,H,W,3]; only the keyframes are sent to Qwen."),
                io.Combo.Input("prompt_mode", options=list(PROMPT_MODES), default="all",
                               tooltip="all: every object; categories: the listed categories; text: a description."),
                io.String.Input("categories", default="",
                                tooltip="categories mode: comma-separated names, e.g. 'person, wine glass'."),
                io.String.Input("text", default="", tooltip="text mode: what to locate, e.g. 'the red car'."),
                io.Int.Input("keyframe_count", default=3, min=1, max=256,
                             tooltip="Keyframes spread evenly over the clip (first and last included)."),
                io.String.Input("keyframe_indices", default="",
                                tooltip="Explicit keyframes, e.g. '0, 12, -1' (negative = from the end); "
                                        "overrides keyframe_count when not empty."),
                io.Int.Input("max_new_tokens", default=512, min=8, max=8192,
                             tooltip="Answer length limit; a list cut off here keeps its complete items."),
                io.Combo.Input("on_parse_error", options=ON_PARSE_ERROR, default="error",
                               tooltip="What to do when an answer holds no grounding JSON: stop with the model's "
                                       "text, or leave that keyframe empty and go on."),
            ],
            outputs=[DetectionsType.Output(display_name="detections", tooltip="Labelled boxes per keyframe."),
                     io.Image.Output(display_name="preview", tooltip="The keyframes with the labelled boxes drawn."),
                     io.String.Output(display_name="answers",
                                      tooltip="Qwen's raw answers as JSON (save them; Detections from JSON reads them "
                                              "back).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, qwen: qwen_core.QwenVL, images: torch.Tensor, prompt_mode: str, categories: str, text: str,
                keyframe_count: int, keyframe_indices: str, max_new_tokens: int,
                on_parse_error: str) -> io.NodeOutput:
        """Detect keyframe by keyframe (progress per keyframe), then map, clamp and merge boxes."""
        frames, height, width = check_images(images, DETECT)
        keys = choose_keyframes(keyframe_count, keyframe_indices, frames)
        cats = [c.strip() for c in categories.split(",") if c.strip()]
        qwen_core.grounding_prompt(qwen.family, prompt_mode, cats, text)  # validates the prompt inputs up front
        result = Detections(width=width, height=height, num_frames=frames, family=qwen.family)
        progress = Progress(len(keys))
        notes: list[str] = []
        start = time.perf_counter()
        try:
            for i, k in enumerate(keys):
                check_interrupt()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    one = qwen_core.detect(qwen, images, [k], prompt_mode, cats, text, max_new_tokens, batch_size=1,
                                           on_error="skip" if on_parse_error == "skip keyframe" else "raise")
                notes += [str(w.message) for w in caught]
                result.frames.update(one.frames)
                result.raw.update(one.raw)
                progress(i + 1, len(keys))
        except DetectionParseError as err:
            raise ValueError(f"{DETECT}: {err}. The answer holds no grounding JSON: raise max_new_tokens if it "
                             "was cut off, try prompt_mode 'categories', or set on_parse_error to 'skip keyframe'. "
                             "(The tiny presets have random weights and never answer sensibly; give boxes with "
                             "EditCtrl Detections From JSON instead.)") from err
        finally:
            release(qwen)
        elapsed = time.perf_counter() - start
        log.info("%s: %d keyframe(s) in %.2fs with %s", DETECT, len(keys), elapsed, qwen.name)
        result = capped(result, notes)
        preview, shown = detections_ui(images, result, cls, DETECT, notes)
        answers = json.dumps({str(k): v for k, v in sorted(result.raw.items())})
        return io.NodeOutput(result, preview, answers, ui=shown)


def answers_by_keyframe(answer: str, keyframes: str, frames: int) -> dict[int, str] | Detections:
    """Split user JSON into per-keyframe answers, or read it as a saved DETECTIONS value (an object with 'frames').

    The text's size and nesting are checked before any JSON parser reads it.
    """
    problem = json_limit_problem(answer)
    if problem:
        raise ValueError(f"{FROM_JSON}: {problem}. Write a grounding answer like {ANSWER_EXAMPLE}, an answer per "
                         'keyframe like {"0": ' + ANSWER_EXAMPLE + "}, or a saved detections value")
    try:
        value = json.loads(answer)
    except ValueError:
        value = None
    if isinstance(value, dict) and "frames" in value:
        try:
            return Detections.from_dict(value)
        except DetectionsFormatError as err:
            raise ValueError(f"{FROM_JSON}: the saved detections are malformed: {err}") from err
    if isinstance(value, dict) and value and all(re.fullmatch(r"-?\d+", str(k).strip()) for k in value):
        split: dict[int, str] = {}
        for key, v in value.items():
            try:
                k = frame_index(int(key), frames)
            except ValueError as err:
                raise ValueError(f"{FROM_JSON}: answer key {key!r}: {err}; write keys like "
                                 '{"0": ' + ANSWER_EXAMPLE + "}") from err
            if k in split:
                raise ValueError(f"{FROM_JSON}: answer keys name frame {k} twice (negative keys count from the end); "
                                 "give each keyframe one answer")
            split[k] = v if isinstance(v, str) else json.dumps(v)
        return split
    keys = parse_keyframes(keyframes, frames)
    if not keys:
        raise ValueError(f"{FROM_JSON}: keyframes is empty; write the frame(s) the boxes belong to, e.g. '0'")
    return {k: answer for k in keys}


class EditCtrlDetectionsFromJSON(io.ComfyNode):
    """Boxes typed in or saved as JSON, read by the same parser as Qwen-VL's answers (deterministic detections)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Frames, the JSON answer, its coordinate system and keyframes."""
        return io.Schema(
            node_id="EditCtrlDetectionsFromJSON",
            display_name="EditCtrl Detections From JSON",
            category=CATEGORY + "/objects",
            description="A grounding answer in Qwen's JSON format (fenced or bare, e.g. "
                        "[{\"bbox_2d\": [x1, y1, x2, y2], \"label\": \"cup\"}]), a {keyframe: answer} object, or "
                        "the 'answers' output of EditCtrl Detect Objects.",
            inputs=[
                io.Image.Input("images", tooltip="The video frames the boxes refer to."),
                io.String.Input("answer", multiline=True, default="[]",
                                tooltip="One answer for every listed keyframe, or {\"0\": [...], \"24\": [...]} "
                                        "with an answer per keyframe."),
                io.Combo.Input("coordinates", options=list(COORDINATES), default="pixels",
                               tooltip="pixels: frame pixels; relative 0-1000: Qwen3-VL style; relative 0-1."),
                io.String.Input("keyframes", default="0",
                                tooltip="Keyframe(s) a single answer applies to, e.g. '0' or '0, 24'."),
            ],
            outputs=[DetectionsType.Output(display_name="detections", tooltip="Labelled boxes per keyframe."),
                     io.Image.Output(display_name="preview", tooltip="The keyframes with the labelled boxes drawn.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images: torch.Tensor, answer: str, coordinates: str, keyframes: str) -> io.NodeOutput:
        """Parse each keyframe's answer and map it to frame pixels (clamped, degenerate dropped, duplicates merged)."""
        frames, height, width = check_images(images, FROM_JSON)
        if coordinates not in COORDINATES:
            raise ValueError(f"{FROM_JSON}: coordinates must be one of {list(COORDINATES)}; got {coordinates!r}")
        family, grid, patch = COORDINATES[coordinates]
        split = answers_by_keyframe(answer, keyframes, frames)
        notes: list[str] = []
        if isinstance(split, Detections):
            result = split
            try:
                result.check_clip(frames)
            except ValueError as err:
                raise ValueError(f"{FROM_JSON}: {err}; connect the video the detections were made on, or number the "
                                 f"saved keyframes within the clip. A saved value looks like {SAVED_EXAMPLE}") from err
        else:
            result = Detections(width=width, height=height, num_frames=frames, family=family)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                for k, text in sorted(split.items()):
                    try:
                        parsed = parse_grounding_answer(text)
                    except DetectionParseError as err:
                        example = "" if ANSWER_EXAMPLE in err.reason else f". Write a JSON list like {ANSWER_EXAMPLE}"
                        raise ValueError(f"{FROM_JSON}: keyframe {k}: {err}{example}") from err
                    result.frames[k] = to_frame_detections(parsed, family, width, height,
                                                           grid_thw=grid or (1, height, width), patch_size=patch)
                    result.raw[k] = text
            notes += [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        result = capped(result, notes)
        preview, shown = detections_ui(images, result, cls, FROM_JSON, notes)
        return io.NodeOutput(result, preview, ui=shown)


class EditCtrlSelectObjects(io.ComfyNode):
    """Pick detected objects by label, index or text: their box masks over all frames."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Detections, frames and the selection."""
        return io.Schema(
            node_id="EditCtrlSelectObjects",
            display_name="EditCtrl Select Objects",
            category=CATEGORY + "/objects",
            description="Picks detected objects by label, index or phrase and turns their boxes into a MASK.",
            inputs=[
                DetectionsType.Input("detections", tooltip="From Detect Objects or Detections from JSON."),
                io.Image.Input("images", tooltip="The video the mask is made for (its frame count and size)."),
                io.Combo.Input("select_by", options=SELECT_BY, default="label",
                               tooltip="label: exact names ('person' also picks 'person#2'); index: positions in the "
                                       "object list; text: a phrase ('the red cup' picks 'cup'); all: every object."),
                io.String.Input("selection", default="",
                                tooltip="Comma-separated labels or indices, or a phrase for text mode."),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="The selected objects' boxes [F,H,W]."),
                     io.String.Output(display_name="selected", tooltip="The names of the selected objects.")],
        )

    @classmethod
    def execute(cls, detections: Detections, images: torch.Tensor, select_by: str, selection: str) -> io.NodeOutput:
        """Union of the selected objects' box masks (boxes interpolated between keyframes, held outside them)."""
        names = selected_objects(detections, images, select_by, selection, "EditCtrl Select")
        frames, height, width = check_images(images, "EditCtrl Select")
        summary = f"selected {len(names)} object(s): {', '.join(names)}"
        log.info("EditCtrl Select: %s", summary)
        mask = union_box_mask(detections, frames, height, width, names)
        return io.NodeOutput(mask, ", ".join(names), ui=ui.PreviewText(summary))


NODES = [EditCtrlQwenVLLoader, EditCtrlDetectObjects, EditCtrlDetectionsFromJSON, EditCtrlSelectObjects]
