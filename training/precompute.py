"""Shared plumbing of the precompute CLIs: finding clips and captions, sharding, resumable per-sample outputs.

A folder of clips is ``<id>.mp4`` (also .mov/.mkv/.webm/.avi; paired-edit targets ``<id>.target.mp4`` are not
samples) with an optional caption sidecar ``<id>.txt``; each
sample writes ``<out>/<id>.safetensors``. Files are written to a hidden temp file and renamed into place, so a
finished file is always complete; a run that was killed leaves at most a ``.<id>.safetensors.tmp-<pid>`` file,
which the next run deletes before redoing that sample. A finished file is skipped when its recorded settings
(`signature`) match the current run; otherwise (other model, caption, prompt …) it is recomputed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from editctrl_core.loading.weights_file import file_digest, remove_stale_temps

from .cli import UsageError
from .data import ShapeRule

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
SIGNATURE_KEY = "precompute_signature"
TINY_QWEN = ("tiny", "tiny-qwen2_5_vl", "tiny-qwen3_vl")


@dataclass(frozen=True)
class Clip:
    """One training sample: its id (file stem), video path and caption (empty when there is no sidecar)."""

    sample_id: str
    video: Path
    caption: str


def list_clips(folder: str | os.PathLike) -> list[Clip]:
    """Video files of a folder (sorted by name) with their `.txt` captions; an error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--clips {folder}: not a folder; give the folder of training clips (<id>.mp4 + <id>.txt)")
    clips = []
    for path in sorted(folder.iterdir()):
        if (path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith(".")
                and not path.stem.endswith(".target")):
            sidecar = path.with_suffix(".txt")
            caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
            clips.append(Clip(path.stem, path, caption))
    ids = [c.sample_id for c in clips]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise UsageError(f"--clips {folder}: several videos share the sample id(s) {duplicates} (same name, other "
                         "extension); rename them so each id is unique")
    if not clips:
        raise UsageError(f"--clips {folder}: no video files ({', '.join(VIDEO_SUFFIXES)}) in it")
    return clips


def parse_shard(text: str | None) -> tuple[int, int]:
    """'INDEX/COUNT' (e.g. '0/4') → (index, count); None → (0, 1)."""
    if not text:
        return 0, 1
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard must look like INDEX/COUNT, e.g. 0/4; got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard {text!r}: need 0 <= INDEX < COUNT")
    return index, count


def shard(clips: list[Clip], index: int, count: int) -> list[Clip]:
    """Every `count`-th clip starting at `index` (disjoint shards cover all clips)."""
    return clips[index::count]


def output_path(out_dir: Path, sample_id: str) -> Path:
    """Where a sample's file goes."""
    return out_dir / f"{sample_id}.safetensors"








def signature(settings: dict[str, Any]) -> str:
    """Canonical JSON of the settings that determine a sample's output."""
    return json.dumps(settings, sort_keys=True)


def finished(path: Path, expected_signature: str, tensor: str) -> tuple[bool, str]:
    """Whether `path` is a complete output of the same settings; otherwise why not (missing/unreadable/stale)."""
    if not path.is_file():
        return False, "missing"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            if tensor not in f.keys():
                return False, f"unreadable (no {tensor!r} tensor)"
    except (SafetensorError, OSError) as err:
        return False, f"unreadable ({err})"
    if meta.get(SIGNATURE_KEY) != expected_signature:
        return False, "stale (made with other settings)"
    return True, "done"


def sidecar_digest(path: Path) -> str:
    """Short sha256 of a sidecar file (16 hex digits), or '' when it does not exist."""
    return file_digest(path)[:16] if path.is_file() else ""


def pick_device(choice: str) -> torch.device:
    """'auto' → the first CUDA GPU if there is one, else the CPU; a bad or absent device is a UsageError."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {choice!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {choice}: no CUDA device is available here; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {choice}: there are only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"--device {choice!r}: use auto, cpu, cuda or cuda:N")
    return device


def model_source(option: str, value: str, tiny: tuple[str, ...]) -> str:
    """`value` of a model option when it is a tiny preset name or an existing folder, else a UsageError."""
    if value in tiny or Path(value).is_dir():
        return value
    raise UsageError(f"{option} {value}: no such folder; give a local model folder (transformers layout, "
                     f".safetensors weights) or one of {', '.join(tiny)}")


def at_least(option: str, value: int, minimum: int = 1) -> int:
    """`value` of an integer option, or a UsageError when it is below `minimum`."""
    if value < minimum:
        raise UsageError(f"{option} must be >= {minimum}, got {value}")
    return value


def add_shape_options(parser: argparse.ArgumentParser) -> None:
    """--frames/--height/--width/--frame-stride: the training data's shape rule (`training.data.ShapeRule`)."""
    default = ShapeRule()
    parser.add_argument("--frames", type=int, default=default.frames,
                        help=f"frames kept per clip, rounded down to 8n+1 (training default {default.frames})")
    parser.add_argument("--height", type=int, default=default.height, help="scale+crop to this height (optional)")
    parser.add_argument("--width", type=int, default=default.width, help="scale+crop to this width (optional)")
    parser.add_argument("--frame-stride", type=int, default=default.frame_stride, help="use every n-th frame")


def shape_rule(args: argparse.Namespace) -> ShapeRule:
    """The shape rule of the command line (must match the training config's data section)."""
    if (args.height is None) != (args.width is None):
        raise UsageError("--height and --width go together (or leave both out to centre-crop to multiples of 32)")
    if args.frames < 1 or args.frame_stride < 1:
        raise UsageError(f"--frames and --frame-stride must be >= 1, got {args.frames} and {args.frame_stride}")
    for option, value in (("--height", args.height), ("--width", args.width)):
        if value is not None and (value < 32 or value % 32):
            raise UsageError(f"{option} must be a positive multiple of 32 (the latent grid is 32 pixels a token), "
                             f"got {value}")
    return ShapeRule(frames=args.frames, height=args.height, width=args.width, frame_stride=args.frame_stride)


def used_frames(total: int, rule: ShapeRule) -> int:
    """How many leading source frames the shape rule draws from (the rest never reach training)."""
    strided = -(-total // rule.frame_stride)
    count = (min(strided, rule.frames) - 1) // 8 * 8 + 1
    return (count - 1) * rule.frame_stride + 1


@dataclass
class Tally:
    """Counts of one run (skipped = already done with the same settings)."""

    computed: int = 0
    skipped: int = 0
    failed: int = 0

    def line(self) -> str:
        """One-line summary."""
        return f"{self.computed} computed, {self.skipped} skipped, {self.failed} failed"


def run_samples(clips: Iterable[Clip], out_dir: Path, settings: dict[str, Any], tensor: str,
                compute: Callable[[Clip, Path, str], None], overwrite: bool, desc: str,
                per_clip: Callable[[Clip], dict[str, Any]] | None = None) -> Tally:
    """The resumable loop: skip finished samples, clear stale temps, compute the rest (tqdm progress).

    A sample's signature is `settings` plus `per_clip(clip)` (e.g. its caption); `compute(clip, path, signature)`
    must write `path` atomically and record the signature under the metadata key `SIGNATURE_KEY`.
    """
    from tqdm import tqdm

    clips = list(clips)
    tally = Tally()
    bar = tqdm(clips, desc=desc, unit="clip")
    for clip in bar:
        path = output_path(out_dir, clip.sample_id)
        sig = signature({**settings, **(per_clip(clip) if per_clip is not None else {})})
        done, why = finished(path, sig, tensor)
        if done and not overwrite:
            tally.skipped += 1
            bar.set_postfix(computed=tally.computed, skipped=tally.skipped, failed=tally.failed)
            continue
        for stale in remove_stale_temps(path):
            logger.info("%s: removed %s left by an interrupted run", clip.sample_id, stale.name)
        if why.startswith(("unreadable", "stale")):
            logger.info("%s: recomputing, the existing file is %s", clip.sample_id, why)
        try:
            compute(clip, path, sig)
        except Exception as err:  # one bad clip must not stop a long precompute; it is reported and counted
            tally.failed += 1
            logger.error("%s: failed: %s", clip.sample_id, err)
            tqdm.write(f"{clip.sample_id}: failed: {err}")
        else:
            tally.computed += 1
        bar.set_postfix(computed=tally.computed, skipped=tally.skipped, failed=tally.failed)
    return tally
