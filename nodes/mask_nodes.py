"""Mask helpers: a rectangle mask for clips, mask algebra (union / intersect / subtract, grow / shrink), and the red
mask-overlay preview."""

from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..editctrl_core.edit.preview import mask_overlay
from ..editctrl_core.perception.object_masks import dilate_mask, mask_intersect, mask_subtract, mask_union
from .common import CATEGORY

MASK_OPS = ["none", "union", "intersect", "subtract"]


class EditCtrlRectMask(io.ComfyNode):
    """A rectangular edit mask covering every frame of a clip (a quick mask without detection)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditCtrlRectMask",
            description="A rectangular MASK over every frame of a clip: the quickest way to mark an edit region.",
            display_name="EditCtrl Rectangle Mask",
            category=CATEGORY + "/masks",
            inputs=[
                io.Image.Input("images", tooltip="The clip [F,H,W,3]: the mask gets its frame count and size."),
                io.Int.Input("x", default=0, min=0, max=16384, tooltip="Left edge of the rectangle in pixels."),
                io.Int.Input("y", default=0, min=0, max=16384, tooltip="Top edge of the rectangle in pixels."),
                io.Int.Input("width", default=64, min=1, max=16384, tooltip="Width in pixels (clipped to the frame)."),
                io.Int.Input("height", default=64, min=1, max=16384, tooltip="Height in pixels (clipped to the frame)."),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="1 inside the rectangle, 0 outside, [F,H,W].")],
        )

    @classmethod
    def execute(cls, images: torch.Tensor, x: int, y: int, width: int, height: int) -> io.NodeOutput:
        frames, h, w = images.shape[:3]
        if x >= w or y >= h:
            raise ValueError(f"rectangle origin ({x}, {y}) lies outside the {w}x{h} frames")
        mask = torch.zeros(frames, h, w)
        mask[:, y:y + height, x:x + width] = 1.0
        return io.NodeOutput(mask)


PREVIEW_FRAMES = 48  # frames of the overlay the node previews (evenly spread; the web extension plays them)


class EditCtrlMaskOverlay(io.ComfyNode):
    """Preview the edit region as a red overlay on the frames (the seed's debug column)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditCtrlMaskOverlay",
            description="The clip with the mask painted red on it, to check what will be edited before running.",
            display_name="EditCtrl Mask Overlay",
            category=CATEGORY + "/masks",
            inputs=[
                io.Image.Input("images", tooltip="The clip [F,H,W,3]."),
                io.Mask.Input("mask", tooltip="The edit mask [F,H,W] (or one frame for all)."),
                io.Float.Input("opacity", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="How strongly the red shows over masked pixels."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The clip with the red overlay.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images: torch.Tensor, mask: torch.Tensor, opacity: float) -> io.NodeOutput:
        overlay = mask_overlay(images, mask, opacity)
        shown = torch.linspace(0, overlay.shape[0] - 1, min(PREVIEW_FRAMES, overlay.shape[0])).round().long().unique()
        return io.NodeOutput(overlay, ui=ui.PreviewImage(overlay[shown], cls=cls))


def match_frames(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks as [F,H,W] with one-frame masks repeated to the other's frame count; shapes must then agree."""
    a = a.unsqueeze(0) if a.ndim == 2 else a
    b = b.unsqueeze(0) if b.ndim == 2 else b
    if a.shape[0] == 1 and b.shape[0] > 1:
        a = a.expand(b.shape[0], -1, -1)
    if b.shape[0] == 1 and a.shape[0] > 1:
        b = b.expand(a.shape[0], -1, -1)
    if a.shape != b.shape:
        raise ValueError(f"EditCtrl Mask Ops: mask_a {tuple(a.shape)} and mask_b {tuple(b.shape)} differ; "
                         "make both masks for the same video")
    return a.float(), b.float()


class EditCtrlMaskOps(io.ComfyNode):
    """Combine two masks (union / intersect / subtract), then grow or shrink the result in pixels."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Masks, operation and growth."""
        return io.Schema(
            node_id="EditCtrlMaskOps",
            display_name="EditCtrl Mask Ops",
            category=CATEGORY + "/masks",
            description="Union, intersection or difference of two masks, grown or shrunk in pixels.",
            inputs=[
                io.Mask.Input("mask_a", tooltip="The first mask [F,H,W]."),
                io.Combo.Input("operation", options=MASK_OPS, default="none",
                               tooltip="none: only grow/shrink mask_a; union: a or b; intersect: a and b; "
                                       "subtract: a without b."),
                io.Int.Input("grow_px", default=0, min=-512, max=512,
                             tooltip="Grow (positive) or shrink (negative) the result by this many pixels."),
                io.Mask.Input("mask_b", optional=True, tooltip="The second mask (for union/intersect/subtract)."),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="The resulting mask.")],
        )

    @classmethod
    def execute(cls, mask_a: torch.Tensor, operation: str, grow_px: int,
                mask_b: torch.Tensor | None = None) -> io.NodeOutput:
        """Apply the operation, then dilate/erode."""
        if operation == "none":
            out = mask_a.float()
        else:
            if mask_b is None:
                raise ValueError(f"EditCtrl Mask Ops: '{operation}' needs mask_b; connect a second mask or choose "
                                 "'none'")
            a, b = match_frames(mask_a, mask_b)
            ops = {"union": mask_union, "intersect": mask_intersect, "subtract": mask_subtract}
            if operation not in ops:
                raise ValueError(f"EditCtrl Mask Ops: operation must be one of {MASK_OPS}; got {operation!r}")
            out = ops[operation](a, b)
        return io.NodeOutput(dilate_mask(out, grow_px))


NODES = [EditCtrlRectMask, EditCtrlMaskOps, EditCtrlMaskOverlay]
