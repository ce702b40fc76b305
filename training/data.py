"""Training data: clips + captions → cached latents and text embeddings (safetensors keyed by content hash).

Clip folder layout: ``*.mp4`` clips; captions from a sidecar ``<stem>.txt``, or one ``captions.json`` (``{"a.mp4":
"caption"}`` or a list of ``{"file", "caption"}``) or ``captions.csv`` (columns ``file``/``video`` and
``caption``/``text``). An optional ``<stem>.target.mp4`` is the desired output for paired edits (e.g. the clip with
the object removed); without it the target is the clip itself (inpainting).

Shape rule (reported per clip): frames — every ``frame_stride``-th frame, the first ``min(F, frames)`` rounded down
to 8n+1; size — scaled to cover ``height``×``width`` (bilinear, antialiased), then centre-cropped; without a target
size, centre-cropped down to multiples of 32.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from editctrl_core.geometry import SPATIAL_FACTOR, TEMPORAL_FACTOR, GeometryError

log = logging.getLogger("editctrl.training")
CACHE_VERSION = 1


class DataError(ValueError):
    """A clip, caption or cache file that cannot be used; the message names the file."""


@dataclass
class ClipSpec:
    """One training clip: its file, caption, optional paired target and sample id (file stem)."""

    path: Path
    caption: str
    target: Path | None = None

    @property
    def sample_id(self) -> str:
        return self.path.stem


@dataclass
class ShapeRule:
    """How clips are brought to a valid LTX-2 shape."""

    frames: int = 17
    height: int | None = None
    width: int | None = None
    frame_stride: int = 1

    def describe(self) -> str:
        """The rule in one sentence."""
        size = (f"scale to cover {self.height}x{self.width} then centre-crop" if self.height and self.width
                else "centre-crop to multiples of 32")
        return (f"frames: every {self.frame_stride}. frame, first min(F, {self.frames}) rounded down to 8n+1; "
                f"size: {size}")

    def apply(self, frames: torch.Tensor) -> tuple[torch.Tensor, str]:
        """Frames [F,H,W,3] → valid LTX-2 frames and a note of what was done."""
        f0, h0, w0 = frames.shape[:3]
        frames = frames[:: self.frame_stride]
        count = min(frames.shape[0], self.frames)
        count = (count - 1) // TEMPORAL_FACTOR * TEMPORAL_FACTOR + 1
        if count < 1:
            raise GeometryError("clip has no frames")
        frames = frames[:count]
        h, w = frames.shape[1:3]
        if self.height and self.width:
            scale = max(self.height / h, self.width / w)
            nh, nw = max(self.height, round(h * scale)), max(self.width, round(w * scale))
            if (nh, nw) != (h, w):
                x = frames.permute(0, 3, 1, 2)
                x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
                frames = x.permute(0, 2, 3, 1).clamp(0, 1)
            th, tw = self.height, self.width
        else:
            nh, nw, scale = h, w, 1.0
            th, tw = h // SPATIAL_FACTOR * SPATIAL_FACTOR, w // SPATIAL_FACTOR * SPATIAL_FACTOR
            if th < SPATIAL_FACTOR or tw < SPATIAL_FACTOR:
                raise GeometryError(f"clip is {h}x{w}; LTX-2 needs at least 32x32")
        top, left = (nh - th) // 2, (nw - tw) // 2
        frames = frames[:, top:top + th, left:left + tw].contiguous()
        note = (f"{f0} frames {h0}x{w0} -> {count} frames {th}x{tw} (stride {self.frame_stride}, scale {scale:.3f}, "
                f"crop top={top} left={left})")
        return frames, note


def _read_captions_file(path: Path) -> dict[str, str]:
    """File name → caption from a captions.json / captions.csv."""
    if not path.is_file():
        raise DataError(f"captions file not found: {path}")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(data, dict):
            items = data.items()
        elif isinstance(data, list):
            try:
                items = [(d.get("file") or d.get("video"), d.get("caption") or d.get("text")) for d in data]
            except AttributeError as exc:
                raise DataError(f"{path}: list entries must be objects with file and caption") from exc
        else:
            raise DataError(f"{path}: expected an object {{file: caption}} or a list of {{file, caption}}")
        out = {}
        for name, caption in items:
            if not isinstance(name, str) or not isinstance(caption, str):
                raise DataError(f"{path}: entry {name!r} needs a file name and a caption string")
            out[Path(name).name] = caption
        return out
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            file_col = next((c for c in ("file", "video", "path") if c in cols), None)
            cap_col = next((c for c in ("caption", "text", "prompt") if c in cols), None)
            if file_col is None or cap_col is None:
                raise DataError(f"{path}: needs a file/video column and a caption/text column; has {cols}")
            return {Path(row[file_col]).name: row[cap_col] for row in reader}
    raise DataError(f"{path}: captions must be a .json or .csv file")


def discover_clips(folder: str | Path, captions: str | Path | None = None) -> list[ClipSpec]:
    """Clips of a folder with their captions (sidecar .txt, or captions.json/.csv); every clip needs a caption."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data.clips: {folder} is not a folder")
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".mp4" and not p.stem.endswith(".target"))
    if not videos:
        raise DataError(f"data.clips: no .mp4 clips in {folder}")
    table: dict[str, str] = {}
    if captions is not None:
        table = _read_captions_file(Path(captions))
    else:
        for name in ("captions.json", "captions.csv"):
            if (folder / name).is_file():
                table = _read_captions_file(folder / name)
                break
    specs = []
    missing = []
    for video in videos:
        sidecar = video.with_suffix(".txt")
        if video.name in table:
            caption = table[video.name]
        elif sidecar.is_file():
            caption = sidecar.read_text().strip()
        else:
            missing.append(video.name)
            continue
        target = video.with_name(video.stem + ".target.mp4")
        specs.append(ClipSpec(video, caption, target if target.is_file() else None))
    if missing:
        raise DataError(f"no caption for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}: add "
                        "<clip>.txt next to each clip or a captions.json/.csv")
    return specs


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(spec: ClipSpec, rule: ShapeRule, encoder_id: str) -> str:
    """Content hash of everything a cached sample depends on (clip bytes, target, caption, rule, encoders)."""
    parts = {
        "version": CACHE_VERSION, "clip": file_digest(spec.path), "caption": spec.caption,
        "target": file_digest(spec.target) if spec.target else None, "rule": rule.__dict__, "encoders": encoder_id,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """save_file to a temp name, then rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass
class Sample:
    """One cached training sample (CPU tensors)."""

    sample_id: str
    latents: torch.Tensor
    target: torch.Tensor
    text_embeds: torch.Tensor
    text_mask: torch.Tensor
    caption: str
    fill: torch.Tensor | None = None
    qwen: torch.Tensor | None = None
    qwen_mask: torch.Tensor | None = None

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.latents.shape[1:])


class Encoders:
    """The VAE and text encoder used to precompute samples, with an id that enters the cache key."""

    def __init__(self, vae: torch.nn.Module, text_encoder: object, encoder_id: str):
        self.vae = vae
        self.text = text_encoder
        self.id = encoder_id
        self._fill: dict[tuple[int, int, int], torch.Tensor] = {}

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames [F,H,W,3] → normalised latents [C,f,h,w]."""
        from editctrl_core.vae import encode_frames

        return encode_frames(self.vae, frames)[0].cpu()

    def fill_latents(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """Latents [C,f,h,w] of an all-grey clip (the background fill of `prepare_edit`), per pixel shape."""
        if shape not in self._fill:
            from editctrl_core.context import BACKGROUND_FILL

            self._fill[shape] = self.encode_frames(torch.full((*shape, 3), BACKGROUND_FILL))
        return self._fill[shape]


def precompute(specs: list[ClipSpec], rule: ShapeRule, encoders: Encoders, cache_dir: str | Path,
               progress: bool = True) -> tuple[list[Path], dict[str, int]]:
    """Encode every clip not yet cached; returns the cache files (in clip order) and counts of done/skipped."""
    from editctrl_core.video_io import read_video

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    files, stats = [], {"encoded": 0, "skipped": 0}
    for spec in specs:
        key = cache_key(spec, rule, encoders.id)
        path = cache_dir / f"{key}.safetensors"
        files.append(path)
        if path.is_file():
            stats["skipped"] += 1
            continue
        try:
            frames, _ = read_video(spec.path)
            frames, note = rule.apply(frames)
        except (ValueError, GeometryError, OSError) as exc:
            raise DataError(f"{spec.path}: {exc}") from exc
        tensors = {"latents": encoders.encode_frames(frames), "fill": encoders.fill_latents(tuple(frames.shape[:3]))}
        if spec.target is not None:
            target, _ = read_video(spec.target)
            target, _ = rule.apply(target)
            if target.shape != frames.shape:
                raise DataError(f"{spec.target}: target shape {tuple(target.shape)} differs from the clip's "
                                f"{tuple(frames.shape)}")
            tensors["target"] = encoders.encode_frames(target)
        cond = encoders.text.encode([spec.caption])
        tensors["text_embeds"] = cond.embeds[0].cpu().float()
        tensors["text_mask"] = cond.mask[0].cpu().to(torch.uint8)
        meta = {"sample_id": spec.sample_id, "caption": spec.caption, "source": spec.path.name, "rule": note,
                "pixel_shape": json.dumps(list(frames.shape[:3])), "encoders": encoders.id}
        _atomic_save(tensors, path, meta)
        stats["encoded"] += 1
        if progress:
            log.info("cached %s: %s", spec.path.name, note)
    return files, stats


def load_sample(path: Path, qwen_dir: str | Path | None = None) -> Sample:
    """Read one cached sample (and its Qwen features when a feature folder is given)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            t = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise DataError(f"{path}: unreadable cache file ({exc}); delete it and re-run to re-encode") from exc
    for key in ("latents", "text_embeds", "text_mask"):
        if key not in t:
            raise DataError(f"{path}: cache file has no {key!r}; delete it and re-run")
    sample = Sample(meta.get("sample_id", path.stem), t["latents"].float(), t.get("target", t["latents"]).float(),
                    t["text_embeds"].float(), t["text_mask"].long(), meta.get("caption", ""),
                    t["fill"].float() if "fill" in t else None)
    if qwen_dir is not None:
        sample.qwen, sample.qwen_mask = load_qwen_features(Path(qwen_dir), sample.sample_id)
    return sample


def load_qwen_features(folder: Path, sample_id: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached Qwen hidden states [L,D] (+ keep-mask [L]) of a sample: `{folder}/{sample_id}.safetensors`."""
    path = folder / f"{sample_id}.safetensors"
    if not path.is_file():
        raise DataError(f"no cached Qwen features for sample {sample_id!r}: expected {path} "
                        "(run training.compute_qwen_features)")
    with safe_open(str(path), framework="pt") as fh:
        keys = set(fh.keys())
        name = next((k for k in ("hidden_states", "features", "last_hidden_state") if k in keys), None)
        if name is None:
            raise DataError(f"{path}: no hidden_states/features tensor (keys: {sorted(keys)})")
        states = fh.get_tensor(name).float()
        mask = None
        for mk in ("attention_mask", "mask"):
            if mk in keys:
                mask = fh.get_tensor(mk).bool()
    if states.ndim == 3:
        states = states[0]
    if mask is not None and mask.ndim == 2:
        mask = mask[0]
    if mask is None:
        mask = torch.ones(states.shape[0], dtype=torch.bool)
    return states, mask


class CachedDataset:
    """The cached samples of a run, held in memory (latents are small), indexable by position."""

    def __init__(self, files: list[Path], qwen_dir: str | Path | None = None):
        if not files:
            raise DataError("no training samples")
        self.samples = [load_sample(f, qwen_dir) for f in files]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def write_synthetic_clips(folder: str | Path, count: int, frames: int, height: int, width: int, seed: int,
                          caption: str, with_targets: bool = True, mask_dir: str | Path | None = None,
                          grid_masks: bool = True) -> list[Path]:
    """Write synthetic clips (moving shape over texture) as mp4 + caption sidecars; optionally the object-removed
    target clip and per-sample object masks on the latent grid (for `masks.semantic_mask_dir`). Existing files
    are kept (idempotent)."""
    from editctrl_core.masks import pixel_mask_to_token_mask
    from editctrl_core.synthetic import make_clip
    from editctrl_core.video_io import write_video
    from training.masks import save_object_masks

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        stem = f"synthetic_{seed + i:05d}"
        path = folder / f"{stem}.mp4"
        out.append(path)
        if path.is_file():
            continue
        clip = make_clip(frames, height, width, seed=seed + i, shape="disc" if i % 2 == 0 else "square")
        if with_targets:
            write_video(folder / f"{stem}.target.mp4", clip.background, crf=12)
        (folder / f"{stem}.txt").write_text(caption)
        if mask_dir is not None:
            token = pixel_mask_to_token_mask(clip.mask) if grid_masks else clip.mask > 0.5
            save_object_masks(Path(mask_dir) / f"{stem}.safetensors", token.unsqueeze(0), ["object"])
        write_video(path, clip.frames, crf=12)
    return out
