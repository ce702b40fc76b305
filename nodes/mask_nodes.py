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
            display_name="EditCtrl Rectangle Mask",
            category=CATEGORY + "/masks",
            inputs=[
                io.Image.Input("images"),
                io.Int.Input("x", default=0, min=0, max=16384),
                io.Int.Input("y", default=0, min=0, max=16384),
                io.Int.Input("width", default=64, min=1, max=16384),
                io.Int.Input("height", default=64, min=1, max=16384),
            ],
            outputs=[io.Mask.Output(display_name="mask")],
        )

    @classmethod
    def execute(cls, images: torch.Tensor, x: int, y: int, width: int, height: int) -> io.NodeOutput:
        frames, h, w = images.shape[:3]
        if x >= w or y >= h:
            raise ValueError(f"rectangle origin ({x}, {y}) lies outside the {w}x{h} frames")
        mask = torch.zeros(frames, h, w)
        mask[:, y:y + height, x:x + width] = 1.0
        return io.NodeOutput(mask)


class EditCtrlMaskOverlay(io.ComfyNode):
    """Preview the edit region as a red overlay on the frames (the seed's debug column)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditCtrlMaskOverlay",
            display_name="EditCtrl Mask Overlay",
            category=CATEGORY + "/masks",
            inputs=[
                io.Image.Input("images"),
                io.Mask.Input("mask"),
                io.Float.Input("opacity", default=0.5, min=0.0, max=1.0, step=0.05),
            ],
            outputs=[io.Image.Output(display_name="images")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images: torch.Tensor, mask: torch.Tensor, opacity: float) -> io.NodeOutput:
        overlay = mask_overlay(images, mask, opacity)
        middle = overlay[overlay.shape[0] // 2: overlay.shape[0] // 2 + 1]
        return io.NodeOutput(overlay, ui=ui.PreviewImage(middle, cls=cls))


NODES = [EditCtrlRectMask, EditCtrlMaskOverlay]
