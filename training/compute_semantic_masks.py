"""Precompute per-sample object masks for training (`semantic_mask_dir` of the `mixed`/`semantic` mask modes).

For every clip of ``--clips``: Qwen-VL grounds objects on evenly spaced keyframes (or boxes are read from a
``<id>.boxes.json`` sidecar: ``{"0": [{"bbox_2d": [x1, y1, x2, y2], "label": "cup"}], ...}`` in frame pixels),
SAM turns the boxes into silhouettes (``--sam``; without it the box masks are used), and each object's mask is
pooled onto the LTX-2 latent token grid (frame 0 alone, then groups of 8 frames; 32x32 pixels per token) after
going through the same shape rule as the training frames (`training.data.ShapeRule`: --frames, --frame-stride,
--height/--width; keep them equal to the training config). Detection runs at the source resolution on the frames
that rule uses.
Output: ``<out>/<id>.safetensors`` written by `training.masks.save_object_masks` (masks [N, f, h, w] + object
names). Re-running skips finished samples; see `training.precompute`.

    python -m training.compute_semantic_masks --clips DIR --out DIR --qwen tiny|PATH [--sam tiny-sam2_video|PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from editctrl_core.edit.masks import pixel_mask_to_token_mask
from editctrl_core.media.video_io import read_video
from editctrl_core.perception.detection import (
    PROMPT_MODES,
    DetectionParseError,
    Detections,
    grounding_prompt,
    parse_grounding_answer,
    to_frame_detections,
)
from editctrl_core.perception.object_masks import keyframe_boxes, object_tracks, objects_to_masks
from editctrl_core.perception.qwen import QwenVL, detect, evenly_spaced, folder_fingerprint
from editctrl_core.perception.qwen import load_or_tiny as load_qwen
from editctrl_core.perception.sam import SAM_FAMILIES, SamBundle, refine
from editctrl_core.perception.sam import load_or_tiny as load_sam

from .cli import ArgumentParser, UsageError, run_cli
from .data import ShapeRule
from .masks import save_object_masks
from .precompute import (
    SIGNATURE_KEY,
    TINY_QWEN,
    Clip,
    add_shape_options,
    at_least,
    list_clips,
    model_source,
    parse_shard,
    pick_device,
    run_samples,
    shape_rule,
    shard,
    sidecar_digest,
    used_frames,
)

TINY_SAM = tuple(f"tiny-{family}" for family in SAM_FAMILIES)

logger = logging.getLogger(__name__)

BOXES_SUFFIX = ".boxes.json"


def boxes_from_sidecar(path: Path, frames: int, height: int, width: int) -> Detections:
    """Detections from a `<id>.boxes.json` sidecar ({source frame: grounding answer}, source-frame pixels)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path.name} is not valid JSON ({err}); write {{\"0\": [{{\"bbox_2d\": [x1, y1, x2, y2], "
                         "\"label\": \"cup\"}]}}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} must be a JSON object mapping frame numbers to box lists")
    result = Detections(width=width, height=height, num_frames=frames, family="boxes")
    for key, answer in data.items():
        try:
            k = int(key)
        except ValueError as err:
            raise ValueError(f"{path.name}: key {key!r} is not a frame number") from err
        k = k + frames if k < 0 else k
        if not 0 <= k < frames:
            logger.warning("%s: frame %s lies beyond the %d frames training uses; ignored", path.name, key, frames)
            continue
        text = answer if isinstance(answer, str) else json.dumps(answer)
        try:
            parsed = parse_grounding_answer(text)
        except DetectionParseError as err:
            raise ValueError(f"{path.name}: frame {k}: {err}") from err
        result.frames[k] = to_frame_detections(parsed, "qwen2_5_vl", width, height, grid_thw=(1, height, width),
                                               patch_size=1)
        result.raw[k] = text
    return result


def to_token_mask(mask: torch.Tensor, rule: ShapeRule) -> torch.Tensor:
    """A source-resolution pixel mask [F,H,W] through the shape rule (as the frames go), pooled to tokens [f,h,w]."""
    shaped, _ = rule.apply(mask.float().unsqueeze(-1).expand(-1, -1, -1, 3))
    return pixel_mask_to_token_mask(shaped[..., 0], threshold=0.5)


def object_pixel_masks(detections: Detections, frames: torch.Tensor, sam: SamBundle | None) -> dict[str, torch.Tensor]:
    """Per object name a pixel mask [F,H,W]: SAM silhouettes when a SAM model is given, else box masks."""
    count, height, width = frames.shape[:3]
    if sam is None:
        return objects_to_masks(detections, count, height, width)
    out: dict[str, torch.Tensor] = {}
    for track in object_tracks(detections):
        out[track.name] = refine(sam, frames, keyframe_boxes([track]), track_clip_margin=0.1)
    return out


class SemanticMaskJob:
    """Models loaded on first need, and the per-clip computation."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Remember the options; nothing is loaded yet."""
        self.args = args
        self._qwen: QwenVL | None = None
        self._sam: SamBundle | None = None
        self.categories = [c.strip() for c in (args.categories or "").split(",") if c.strip()]
        self.rule = shape_rule(args)
        at_least("--keyframes", args.keyframes)
        at_least("--max-new-tokens", args.max_new_tokens)
        model_source("--qwen", args.qwen, TINY_QWEN)
        if args.sam is not None:
            model_source("--sam", args.sam, TINY_SAM)
        try:  # the prompt options are checked before any model is loaded
            grounding_prompt("qwen2_5_vl", args.prompt_mode, self.categories, args.text)
        except ValueError as err:
            raise UsageError(f"--prompt-mode {args.prompt_mode}: {err}") from None
        self.device = pick_device(args.device)

    def qwen(self) -> QwenVL:
        """The Qwen-VL model (loaded once)."""
        if self._qwen is None:
            start = time.perf_counter()
            self._qwen = load_qwen(self.args.qwen, device=self.device, dtype=self.args.dtype)
            logger.info("loaded Qwen-VL %s in %.1fs", self._qwen.name, time.perf_counter() - start)
        return self._qwen

    def sam(self) -> SamBundle | None:
        """The SAM model (loaded once), or None for box masks."""
        if self.args.sam and self._sam is None:
            self._sam = load_sam(self.args.sam, device=self.device, dtype=self.args.dtype)
        return self._sam

    def settings(self) -> dict[str, Any]:
        """What determines the outputs (recorded in each file; a change recomputes)."""
        a = self.args
        qwen_id = a.qwen if a.qwen in TINY_QWEN else f"{Path(a.qwen).name}:{folder_fingerprint(a.qwen)}"
        sam_id = None
        if a.sam:
            sam_id = a.sam if a.sam.startswith("tiny-") else f"{Path(a.sam).name}:{folder_fingerprint(a.sam)}"
        return {"tool": "compute_semantic_masks", "qwen": qwen_id, "sam": sam_id, "prompt_mode": a.prompt_mode,
                "categories": self.categories, "text": a.text or "", "keyframes": a.keyframes,
                "max_new_tokens": a.max_new_tokens, "shape_rule": self.rule.describe()}

    def compute(self, clip: Clip, path: Path, sig: str) -> None:
        """Detect, refine, shape like the training frames, pool to tokens and write one sample."""
        frames, _ = read_video(clip.video)
        total, height, width = frames.shape[:3]
        frames = frames[:used_frames(total, self.rule)]
        count = frames.shape[0]
        sidecar = clip.video.with_name(clip.sample_id + BOXES_SUFFIX)
        if sidecar.is_file():
            detections = boxes_from_sidecar(sidecar, count, height, width)
            source = sidecar.name
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                detections = detect(self.qwen(), frames, evenly_spaced(count, self.args.keyframes),
                                    self.args.prompt_mode, self.categories, self.args.text,
                                    self.args.max_new_tokens, on_error="skip")
            for w in caught:
                logger.warning("%s: %s", clip.sample_id, w.message)
            source = self.qwen().name
        pixel = object_pixel_masks(detections, frames, self.sam())
        names = list(pixel)
        if names:
            tokens = torch.stack([to_token_mask(m, self.rule) for m in pixel.values()])
        else:
            tokens = to_token_mask(torch.zeros(count, height, width), self.rule).unsqueeze(0)[:0]
            logger.warning("%s: no objects found; the sample gets an empty object list (random masks in training)",
                           clip.sample_id)
        sam = self.sam()
        metadata = {SIGNATURE_KEY: sig, "clip": clip.video.name, "boxes_from": source,
                    "masks_from": sam.name if sam is not None else "boxes", "source_shape": [total, height, width],
                    "shape_rule": self.rule.describe(), "detections": detections.to_json(),
                    "sidecar": sidecar.name if sidecar.is_file() else ""}
        save_object_masks(path, tokens, names, metadata)  # atomic: temp `.<id>.safetensors.tmp-<pid>` + rename


def build_parser() -> ArgumentParser:
    """Command-line options (a usage mistake raises UsageError)."""
    p = ArgumentParser(prog="python -m training.compute_semantic_masks", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", required=True, type=Path, help="folder of clips (<id>.mp4 + optional <id>.txt)")
    p.add_argument("--out", required=True, type=Path, help="output folder (the training semantic_mask_dir)")
    p.add_argument("--qwen", required=True, help="tiny, tiny-qwen3_vl, or a Qwen2.5-VL/Qwen3-VL folder")
    p.add_argument("--sam", default=None, help="tiny-<family> or a SAM/SAM2/SAM3 folder; omitted: box masks")
    p.add_argument("--prompt-mode", default="all", choices=PROMPT_MODES)
    p.add_argument("--categories", default="", help="categories mode: comma-separated names")
    p.add_argument("--text", default="", help="text mode: what to locate")
    p.add_argument("--keyframes", type=int, default=3, help="keyframes per clip, evenly spaced (default 3)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    add_shape_options(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--shard", default=None, help="INDEX/COUNT: process every COUNT-th clip from INDEX")
    p.add_argument("--overwrite", action="store_true", help="recompute samples that are already done")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; exit status 1 when some clip failed. Usage mistakes raise UsageError (see `run_cli`)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    job = SemanticMaskJob(args)
    clips = shard(list_clips(args.clips), *parse_shard(args.shard))
    tally = run_samples(clips, args.out, job.settings(), "masks", job.compute, args.overwrite, "semantic masks",
                        per_clip=lambda clip: {"boxes": sidecar_digest(clip.video.with_name(clip.sample_id + BOXES_SUFFIX))})
    print(f"compute_semantic_masks: {tally.line()} -> {args.out}")
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
