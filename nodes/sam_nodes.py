"""SAM / SAM2 / SAM3: loading and box → silhouette refinement over the clip (thin nodes over `editctrl_core.perception.sam`)."""

from __future__ import annotations

import logging
import time
import warnings

import torch
from comfy_api.latest import io

from ..editctrl_core.perception import sam as sam_core
from ..editctrl_core.perception.detection import (
    Detections,
)
from ..editctrl_core.perception.object_masks import (
    scale_box,
    tracks_for,
    union_box_mask,
)
from .common import CATEGORY, Progress, check_interrupt, notice, pick_device
from .detection_nodes import DEVICES, DTYPES, SELECT_BY, DetectionsType, check_images, selected_objects, shown_text
from .model_folders import SAM_FOLDER, mark_offload_after_use, model_folders, release, resolve_model_folder

log = logging.getLogger("editctrl")

SamType = io.Custom("EDITCTRL_SAM")
TINY_SAM = tuple(f"tiny-{family}" for family in sam_core.SAM_FAMILIES)
NO_SAM_NOTE = ("no SAM model connected: using the detection boxes as masks "
               "(connect EditCtrl Load SAM for object silhouettes)")
SAM_REFINE = "EditCtrl SAM Refine"


class EditCtrlSAMLoader(io.ComfyNode):
    """Load SAM / SAM2 / SAM3 (transformers folder in models/sams) or a tiny test preset."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Model choice, image/video mode, dtype, device."""
        return io.Schema(
            node_id="EditCtrlSAMLoader",
            display_name="EditCtrl Load SAM",
            category=CATEGORY + "/objects",
            description="SAM / SAM2 / SAM3 (safetensors folders under models/sams) for SAM Refine.",
            inputs=[
                io.Combo.Input("model", options=[*TINY_SAM, *model_folders(SAM_FOLDER)],
                               default=next(iter(model_folders(SAM_FOLDER)), "tiny-sam2_video"),
                               tooltip="A SAM, SAM2 or SAM3 folder under models/sams (transformers layout, e.g. "
                                       "sam2.1-hiera-large), or a tiny preset with random weights for tests."),
                io.Combo.Input("mode", options=["auto", "video", "image"], default="auto",
                               tooltip="video: propagate masks through every frame (SAM2/SAM3); image: segment "
                                       "keyframes and move the silhouette with the box; auto: video when the "
                                       "checkpoint has a video model. Tiny presets name their mode."),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="'auto' = bfloat16 on a GPU that supports it, else float32."),
                io.Combo.Input("device", options=DEVICES, default="auto", tooltip="auto: ComfyUI's device (the GPU when there is one)."),
                io.Boolean.Input("offload_after_use", default=True,
                                 tooltip="Move the weights to the CPU after each use."),
            ],
            outputs=[SamType.Output(display_name="sam", tooltip="For EditCtrl SAM Refine.")],
        )

    @classmethod
    def execute(cls, model: str, mode: str, dtype: str, device: str, offload_after_use: bool) -> io.NodeOutput:
        """Load the preset or folder."""
        dev = pick_device(device)
        modes = {"auto": None, "video": True, "image": False}
        if mode not in modes:
            raise ValueError(f"EditCtrl Load SAM: mode must be one of {list(modes)}; got {mode!r}")
        video = modes[mode]
        start = time.perf_counter()
        if model in TINY_SAM:
            bundle = sam_core.tiny_sam(model[len("tiny-"):], device=dev)
        else:
            bundle = sam_core.load_sam(resolve_model_folder(SAM_FOLDER, model), device=dev, dtype=dtype, video=video)
        if offload_after_use:
            mark_offload_after_use(bundle)
        log.info("EditCtrl: loaded SAM %s (%s) in %.1fs", bundle.name, bundle.family, time.perf_counter() - start)
        return io.NodeOutput(bundle)


class EditCtrlSAMRefine(io.ComfyNode):
    """Turn the selected objects' boxes into silhouettes with SAM (box masks when no SAM is connected)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Frames, detections, selection, optional SAM and clipping."""
        return io.Schema(
            node_id="EditCtrlSAMRefine",
            display_name="EditCtrl SAM Refine",
            category=CATEGORY + "/objects",
            description="Turns the selected objects' boxes into silhouettes with SAM, propagated over the clip "
                        "(box masks when no SAM is connected, and the node says so).",
            inputs=[
                io.Image.Input("images", tooltip="The video the detections were made on [F,H,W,3]."),
                DetectionsType.Input("detections", tooltip="From Detect Objects, Detections from JSON or the picker."),
                io.Combo.Input("select_by", options=SELECT_BY, default="label",
                               tooltip="As in EditCtrl Select Objects."),
                io.String.Input("selection", default="",
                                tooltip="Comma-separated labels or indices, or a phrase for text mode."),
                SamType.Input("sam", optional=True,
                              tooltip="Unconnected: the box masks are used (and the node says so)."),
                io.Boolean.Input("clip_to_box", default=True,
                                 tooltip="Keep each silhouette inside its box grown by box_margin (also on frames "
                                         "a video model propagated to)."),
                io.Float.Input("box_margin", default=0.1, min=0.0, max=2.0, step=0.01,
                               tooltip="Growth of the clipping box, as a fraction of its longest side (at least 4 px)."),
                io.Float.Input("threshold", default=0.0, min=-20.0, max=20.0, step=0.1,
                               tooltip="SAM mask-logit threshold; higher gives tighter silhouettes."),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="The silhouettes [F,H,W] (0..1)."),
                     io.String.Output(display_name="info", tooltip="What was segmented, and how.")],
        )

    @classmethod
    def execute(cls, images: torch.Tensor, detections: Detections, select_by: str, selection: str, clip_to_box: bool,
                box_margin: float, threshold: float, sam: sam_core.SamBundle | None = None) -> io.NodeOutput:
        """One SAM pass per selected object (progress per object); the union of the silhouettes."""
        names = selected_objects(detections, images, select_by, selection, SAM_REFINE)
        frames, height, width = check_images(images, SAM_REFINE)
        if sam is None:
            info = f"{NO_SAM_NOTE}; objects: {', '.join(names)}"
            mask = union_box_mask(detections, frames, height, width, names)
            return io.NodeOutput(mask, info, ui=notice(SAM_REFINE, [info]))
        sx, sy = width / detections.width, height / detections.height
        margin = box_margin if clip_to_box else None
        progress = Progress(len(names))
        notes: list[str] = []
        result = torch.zeros(frames, height, width)
        start = time.perf_counter()
        try:
            for i, track in enumerate(tracks_for(detections, names)):
                check_interrupt()
                boxes = {k: [scale_box(box, sx, sy)] for k, box in track.boxes.items()}
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    mask = sam_core.refine(sam, images, boxes, threshold=threshold, clip_margin=margin,
                                           track_clip_margin=margin)
                notes += [f"{track.name}: {w.message}" for w in caught]
                torch.maximum(result, mask.to(result.dtype), out=result)
                progress(i + 1, len(names))
        finally:
            release(sam)
        elapsed = time.perf_counter() - start
        summary = (f"SAM {sam.family} ({sam.name}) refined {len(names)} object(s) over {frames} frames in "
                   f"{elapsed:.2f}s: {', '.join(names)}")
        log.info("%s: %s", SAM_REFINE, summary)
        shown = shown_text(SAM_REFINE, summary, notes)
        return io.NodeOutput(result, shown.value, ui=shown)


NODES = [EditCtrlSAMLoader, EditCtrlSAMRefine]
