"""Precompute the Qwen-VL hidden states TMA trains on, one file per clip.

For every clip of ``--clips`` (``<id>.mp4`` + caption ``<id>.txt``): the clip goes through the training shape rule
(`training.data.ShapeRule`: --frames, --frame-stride, --height/--width — keep them equal to the training config),
then Qwen-VL reads K evenly spaced frames plus the editing template with the caption, exactly as the
EditCtrl TMA node does at inference (`editctrl_core.perception.qwen.hidden_states`). Output ``<out>/<id>.safetensors``:
``hidden_states`` [L, hidden] (``--save-dtype``, bfloat16 by default) and ``attention_mask`` [L], with the model,
caption, template and frame indices in the metadata — the layout `training.data.load_qwen_features` reads.
Re-running skips finished samples (a changed caption, model or option recomputes); see `training.precompute`.

    python -m training.compute_qwen_features --clips DIR --out DIR --qwen tiny|PATH [--k-frames 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from editctrl_core.loading.weights_file import save_safetensors
from editctrl_core.media.video_io import read_video
from editctrl_core.perception.qwen import EDIT_TEMPLATE, QwenVL, evenly_spaced, folder_fingerprint, hidden_states
from editctrl_core.perception.qwen import load_or_tiny as load_qwen

from .cli import ArgumentParser, UsageError, run_cli
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
    used_frames,
)

logger = logging.getLogger(__name__)

SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class QwenFeatureJob:
    """The Qwen model (loaded on first need) and the per-clip computation."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Remember the options; the model is loaded when the first sample needs it."""
        if "{caption}" not in args.template:
            raise UsageError("--template must contain '{caption}' (and may contain '{k}', the frame count)")
        at_least("--k-frames", args.k_frames)
        model_source("--qwen", args.qwen, TINY_QWEN)
        self.args = args
        self.rule = shape_rule(args)
        self.device = pick_device(args.device)
        self._qwen: QwenVL | None = None

    def qwen(self) -> QwenVL:
        """The Qwen-VL model (loaded once)."""
        if self._qwen is None:
            start = time.perf_counter()
            self._qwen = load_qwen(self.args.qwen, device=self.device, dtype=self.args.dtype)
            logger.info("loaded Qwen-VL %s in %.1fs", self._qwen.name, time.perf_counter() - start)
        return self._qwen

    def settings(self) -> dict[str, Any]:
        """What determines every output (with the caption per clip; recorded in each file)."""
        a = self.args
        qwen_id = a.qwen if a.qwen in TINY_QWEN else f"{Path(a.qwen).name}:{folder_fingerprint(a.qwen)}"
        return {"tool": "compute_qwen_features", "qwen": qwen_id, "dtype": a.dtype, "k_frames": a.k_frames,
                "template": a.template, "save_dtype": a.save_dtype, "shape_rule": self.rule.describe()}

    def compute(self, clip: Clip, path: Path, sig: str) -> None:
        """Hidden states of one clip + caption, written atomically."""
        if not clip.caption:
            raise ValueError(f"no caption: write {clip.video.with_suffix('.txt').name} next to the clip")
        frames, _ = read_video(clip.video)
        frames, note = self.rule.apply(frames[:used_frames(frames.shape[0], self.rule)])
        qwen = self.qwen()
        states = hidden_states(qwen, frames, clip.caption, k_frames=self.args.k_frames, template=self.args.template,
                               use_cache=False)[0]
        tensors = {"hidden_states": states.to(SAVE_DTYPES[self.args.save_dtype]).contiguous(),
                   "attention_mask": torch.ones(states.shape[0], dtype=torch.bool)}
        metadata = {SIGNATURE_KEY: sig, "sample_id": clip.sample_id, "clip": clip.video.name, "caption": clip.caption,
                    "template": self.args.template, "model": qwen.name, "family": qwen.family,
                    "fingerprint": qwen.fingerprint, "hidden_size": str(states.shape[-1]),
                    "frames": json.dumps(evenly_spaced(frames.shape[0], self.args.k_frames)), "shape": note}
        save_safetensors(path, tensors, metadata)


def build_parser() -> ArgumentParser:
    """Command-line options (a usage mistake raises UsageError)."""
    p = ArgumentParser(prog="python -m training.compute_qwen_features", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", required=True, type=Path, help="folder of clips (<id>.mp4 + <id>.txt caption)")
    p.add_argument("--out", required=True, type=Path, help="output folder (the training Qwen feature folder)")
    p.add_argument("--qwen", required=True, help="tiny, tiny-qwen3_vl, or a Qwen2.5-VL/Qwen3-VL folder")
    p.add_argument("--k-frames", type=int, default=4, help="frames Qwen-VL reads per clip (default 4)")
    p.add_argument("--template", default=EDIT_TEMPLATE, help="editing template with {caption} (and {k})")
    p.add_argument("--save-dtype", default="bfloat16", choices=list(SAVE_DTYPES))
    add_shape_options(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--shard", default=None, help="INDEX/COUNT: process every COUNT-th clip from INDEX")
    p.add_argument("--overwrite", action="store_true", help="recompute samples that are already done")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; exit status 1 when some clip failed (e.g. has no caption). Usage mistakes raise UsageError."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    job = QwenFeatureJob(args)
    clips = shard(list_clips(args.clips), *parse_shard(args.shard))
    tally = run_samples(clips, args.out, job.settings(), "hidden_states", job.compute, args.overwrite,
                        "qwen features", per_clip=lambda clip: {"caption": clip.caption})
    print(f"compute_qwen_features: {tally.line()} -> {args.out}")
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
