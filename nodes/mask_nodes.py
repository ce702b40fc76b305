"""Mask helpers: a rectangle mask for clips, and the red mask-overlay preview."""

from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..editctrl_core.preview import mask_overlay
from .common import CATEGORY


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


NODES = [EditCtrlRectMask, EditCtrlMaskOverlay]
