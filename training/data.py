"""Training data: clips + captions → cached latents and text embeddings (safetensors keyed by content hash).

Clip folder layout: ``*.mp4`` clips; captions from a sidecar ``<stem>.txt``, or one ``captions.json`` (``{"a.mp4":
"caption"}`` or a list of ``{"file", "caption"}``) or ``captions.csv`` (columns ``file``/``video`` and
``caption``/``text``). An optional ``<stem>.target.mp4`` is the desired output for paired edits (e.g. the clip with
the object removed); without it the target is the clip itself (inpainting).

Shape rule (reported per clip): frames — every ``frame_stride``-th frame, the first ``min(F, frames)`` rounded down
to 8n+1; size — scaled to cover ``height``×``width`` (bilinear, antialiased), then centre-cropped; without a target
size, centre-cropped down to multiples of 32.

Text: ``data.text_encoder: tiny`` embeds captions with the built-in tiny encoder per sample. A path to LTX-2's Gemma
text encoder (`CachedTextEncoder`) is loaded once, encodes every caption not cached yet (plus the empty prompt used
for caption dropout) in batches into ``<cache>/text/``, and is freed before the VAE pass and training; its identity
(digests of the Gemma, connector and tokenizer files, preset, length) enters every cache key, so another encoder
re-encodes instead of reusing stale embeddings.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors import safe_open

from editctrl_core.checks import NonFiniteError, check_finite_tensor
from editctrl_core.conditioning.text import TextConditioning
from editctrl_core.edit.context import DEFAULT_FPS, GlobalLatents, encode_global
from editctrl_core.edit.geometry import SPATIAL_FACTOR, TEMPORAL_FACTOR, GeometryError
from editctrl_core.loading.weights_file import file_digest, save_safetensors, write_text

if TYPE_CHECKING:
    from editctrl_core.conditioning.text_encoders import LTXTextEncoder
    from training.config import Config, DataConfig

log = logging.getLogger("editctrl.training")
CACHE_VERSION = 3  # 2: samples record the clip's frame rate (RoPE's time axis); 3: the global context's low-res latents
TINY_TEXT_ID = "tiny-ltx"  # cache identity of the tiny text preset (caches made by the old raw-Gemma tiny are stale)
TEXT_DTYPE = "bfloat16"  # what `load_text_encoder` computes real Gemma weights in (enters the encoder identity)
HASH_PROGRESS_BYTES = 1 << 28  # show a progress bar when hashing weights larger than this


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


def cache_key(spec: ClipSpec, rule: ShapeRule, encoder_id: str) -> str:
    """Content hash of everything a cached sample depends on (clip bytes, target, caption, rule, encoders)."""
    parts = {
        "version": CACHE_VERSION, "clip": file_digest(spec.path), "caption": spec.caption,
        "target": file_digest(spec.target) if spec.target else None, "rule": rule.__dict__, "encoders": encoder_id,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]




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
    fps: float = DEFAULT_FPS
    #: The global context's low-resolution latents of the clip (`editctrl_core.edit.context.encode_global`).
    global_latents: GlobalLatents | None = None

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.latents.shape[1:])


class Encoders:
    """The VAE and text encoder used to precompute samples, with an id that enters the cache key."""

    def __init__(self, vae: torch.nn.Module, text_encoder: object, encoder_id: str):
        self.vae = vae
        self.text = text_encoder
        self.id = encoder_id

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames [F,H,W,3] → normalised latents [C,f,h,w]."""
        from editctrl_core.media.vae import encode_frames

        return encode_frames(self.vae, frames)[0].cpu()

    def fill_latents(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """Latents [C,f,h,w] of an all-grey clip (the background fill of `prepare_edit`), per pixel shape."""
        from editctrl_core.edit.context import fill_latents

        return fill_latents(self.vae, shape)[0]

    def encode_global(self, frames: torch.Tensor) -> GlobalLatents:
        """The global context's low-resolution latents of a clip [F,H,W,3] (what inference's edit context uses)."""
        return encode_global(self.vae, frames)


def _sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, with a tqdm bar for multi-GB weights."""
    from tqdm import tqdm

    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as fh, tqdm(total=size, unit="B", unit_scale=True, desc=f"hashing {path.name}",
                                      disable=size < HASH_PROGRESS_BYTES) as bar:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def weights_digest(path: str | Path, memo_file: Path | None = None) -> str:
    """sha256 of a weights file, or of a folder's files (relative names + contents).

    Digests are remembered in `memo_file` per (real path, size, mtime), so a 24 GB Gemma file is read once, not on
    every run.
    """
    path = Path(path)
    memo: dict[str, str] = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except json.JSONDecodeError:
            memo = {}
    before = dict(memo)

    def one(file: Path) -> str:
        st = file.stat()
        key = f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in memo:
            memo[key] = _sha256_file(file)
        return memo[key]

    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(path).parts))
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relative_to(path).as_posix()}\0{one(f)}\n".encode())
        digest = h.hexdigest()
    else:
        digest = one(path)
    if memo_file is not None and memo != before:
        write_text(memo_file, json.dumps(memo, indent=1, sort_keys=True))
    return digest


def resolve_text_connectors(d: DataConfig, model_weights: str | None) -> Path | None:
    """Where the LTX-2 text connectors come from: data.text_connectors, else the Gemma folder's connectors/ (None:
    the loader finds them), else model.weights (the LTX checkpoint carries them)."""
    from training.config import ConfigError

    if d.text_connectors is not None:
        return Path(d.text_connectors)
    if (Path(d.text_encoder) / "connectors" / "config.json").is_file():
        return None
    if model_weights is not None:
        return Path(model_weights)
    raise ConfigError("data.text_connectors: LTX-2's text connectors ship in the LTX checkpoint, not with Gemma: set "
                      "model.weights to the LTX-2 checkpoint, or data.text_connectors to it")


def _text_parts(source: Path) -> list[Path]:
    """The parts of a weights path the text encoder reads: a diffusers pipeline folder's text_encoder/, tokenizer/
    and connectors/ (not its multi-GB transformer), else the path itself."""
    if source.is_dir() and ((source / "text_encoder" / "config.json").is_file()
                            or (source / "connectors" / "config.json").is_file()):
        return [source / n for n in ("text_encoder", "tokenizer", "connectors") if (source / n).is_dir()]
    return [source]


def _parts_digest(source: str | Path, memo_file: Path | None) -> str:
    """Digest of `_text_parts(source)`."""
    parts = _text_parts(Path(source))
    if parts == [Path(source)]:
        return weights_digest(source, memo_file)
    return hashlib.sha256("|".join(f"{p.name}:{weights_digest(p, memo_file)}" for p in parts).encode()).hexdigest()


def text_encoder_identity(d: DataConfig, connectors: Path | None, memo_file: Path | None = None) -> str:
    """Identity of a Gemma text encoder setup (weight, connector and tokenizer digests, preset, length, dtype)."""
    parts = {
        "gemma": _parts_digest(d.text_encoder, memo_file),
        "connectors": None if connectors is None else _parts_digest(connectors, memo_file),
        "tokenizer": None if d.tokenizer is None else weights_digest(d.tokenizer, memo_file),
        "preset": d.text_encoder_preset, "max_tokens": d.text_max_tokens, "dtype": TEXT_DTYPE,
    }
    return "gemma:" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def load_gemma_text_encoder(d: DataConfig, connectors: Path | None, device: torch.device) -> LTXTextEncoder:
    """LTX-2's text encoder from the data config via the core loader; load errors name the config field."""
    from editctrl_core.conditioning.text_encoders import load_text_encoder
    from editctrl_core.loading.models import ModelLoadError
    from training.config import ConfigError

    try:
        return load_text_encoder(d.text_encoder, d.text_encoder_preset, connectors=connectors, tokenizer=d.tokenizer,
                                 device=device, max_length=d.text_max_tokens or None)
    except ModelLoadError as exc:
        raise ConfigError(f"data.text_encoder: cannot load {d.text_encoder} ({exc}); check data.text_connectors, "
                          "data.tokenizer and data.text_encoder_preset") from exc
    except ValueError as exc:  # the length does not fit the connectors' learnable registers
        raise ConfigError(f"data.text_max_tokens: {exc}") from exc


class CachedTextEncoder:
    """A real text encoder behind a per-prompt disk cache: loaded once for all missing prompts, then freed.

    `prepare(prompts)` encodes (in batches) the prompts that have no file in `folder` yet and releases the encoder;
    `encode(prompts)` returns their cached conditioning, so training never holds Gemma in memory.
    """

    def __init__(self, load: Callable[[], Any], identity: str, folder: Path,
                 transformer_config: Mapping[str, Any] | None = None, batch_size: int = 4, label: str = ""):
        self.load = load
        self.id = identity
        self.folder = Path(folder)
        self.transformer_config = transformer_config
        self.batch_size = batch_size
        self.label = label or identity
        self.loads = 0

    def path(self, prompt: str) -> Path:
        """Cache file of one prompt under this encoder."""
        key = hashlib.sha256(f"{self.id}\0{prompt}".encode()).hexdigest()[:32]
        return self.folder / f"{key}.safetensors"

    def _check_width(self, cond: TextConditioning) -> None:
        """Raise ConfigError when the embeddings do not fit the transformer's caption width."""
        from editctrl_core.conditioning.text_encoders import check_text_width
        from training.config import ConfigError

        if self.transformer_config is None:
            return
        try:
            check_text_width(cond, self.transformer_config)
        except ValueError as exc:
            raise ConfigError(f"data.text_encoder: {exc} (text encoder {self.label}; the LTX-2 model is "
                              "model.weights / model.preset)") from exc

    def prepare(self, prompts: list[str], progress: bool = True) -> int:
        """Encode and cache every prompt without a file (one load, batches, then free); returns how many."""
        from tqdm import tqdm

        missing = [p for p in dict.fromkeys(prompts) if not self.path(p).is_file()]
        if not missing:
            return 0
        self.folder.mkdir(parents=True, exist_ok=True)
        encoder = self.load()
        self.loads += 1
        if hasattr(encoder, "describe"):
            log.info("text: %s", encoder.describe())
        try:
            batches = [missing[i:i + self.batch_size] for i in range(0, len(missing), self.batch_size)]
            with tqdm(total=len(missing), desc="text encoding", unit="prompt", disable=not progress) as bar:
                for batch in batches:
                    cond = encoder.encode(batch)
                    self._check_width(cond)
                    for row, prompt in enumerate(batch):
                        tensors = {"text_embeds": cond.embeds[row].cpu().float(),
                                   "text_mask": cond.mask[row].cpu().to(torch.uint8)}
                        save_safetensors(self.path(prompt), tensors, {"prompt": prompt, "encoder": self.id})
                    bar.update(len(batch))
        finally:
            del encoder
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return len(missing)

    def encode(self, prompts: list[str] | str) -> TextConditioning:
        """Cached conditioning of the prompts (encoding any that are not cached yet)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        self.prepare(prompts, progress=False)
        embeds, masks = [], []
        for prompt in prompts:
            path = self.path(prompt)
            try:
                with safe_open(str(path), framework="pt") as fh:
                    embeds.append(fh.get_tensor("text_embeds"))
                    masks.append(fh.get_tensor("text_mask").long())
            except Exception as exc:
                raise DataError(f"{path}: unreadable text cache file ({exc}); delete it and re-run") from exc
        cond = TextConditioning(torch.stack(embeds), torch.stack(masks), prompts[0] if len(prompts) == 1 else "")
        self._check_width(cond)
        return cond


def training_text_encoder(cfg: Config, preset: Any, transformer: torch.nn.Module,
                          cache_dir: str | Path) -> tuple[Any, str]:
    """The run's text encoder for precompute and its cache identity.

    'tiny' → the built-in `tiny` text preset (`build_tiny_text_encoder`, identity 'tiny-ltx'); a path → a `CachedTextEncoder`
    over LTX-2's Gemma weights, on data.text_device ('auto': the transformer's device).
    """
    from training.config import ConfigError

    d = cfg.data
    if d.text_encoder == "tiny":
        from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder

        encoder = build_tiny_text_encoder()
        width, want = encoder.caption_channels, preset.transformer["caption_channels"]
        if width != want:
            raise ConfigError(f"data.text_encoder: 'tiny' is the built-in test encoder ({width} wide) but model "
                              f"{preset.name} expects caption_channels {want}: set data.text_encoder to LTX-2's Gemma "
                              "text encoder, e.g. models/text_encoders/gemma_3_12B_it.safetensors")
        return encoder, TINY_TEXT_ID
    if d.text_device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("data.text_device: 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if d.text_device == "auto":
        device = next(transformer.parameters()).device
        device = device if device.type == "cuda" else torch.device("cpu")
    else:
        device = torch.device(d.text_device)
    connectors = resolve_text_connectors(d, cfg.model.weights)
    cache_dir = Path(cache_dir)
    identity = text_encoder_identity(d, connectors, cache_dir / "weight_digests.json")
    label = d.text_encoder + (f" + {connectors}" if connectors is not None else "")
    text = CachedTextEncoder(lambda: load_gemma_text_encoder(d, connectors, device), identity, cache_dir / "text",
                             transformer.config, d.text_batch_size, label)
    return text, identity


def precompute(specs: list[ClipSpec], rule: ShapeRule, encoders: Encoders, cache_dir: str | Path,
               progress: bool = True) -> tuple[list[Path], dict[str, int]]:
    """Encode every clip not yet cached; returns the cache files (in clip order) and counts of done/skipped.

    A text encoder with `prepare` (`CachedTextEncoder`) first encodes all captions of the clips to do, plus the empty
    prompt, in one load, and is freed before the VAE pass.
    """
    from editctrl_core.media.video_io import read_video

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    files = [cache_dir / f"{cache_key(spec, rule, encoders.id)}.safetensors" for spec in specs]
    stats = {"encoded": 0, "skipped": 0}
    prepare = getattr(encoders.text, "prepare", None)
    if prepare is not None:
        prepare([""] + [spec.caption for spec, path in zip(specs, files) if not path.is_file()], progress=progress)
    for spec, path in zip(specs, files):
        if path.is_file():
            stats["skipped"] += 1
            continue
        try:
            frames, fps = read_video(spec.path)
            frames, note = rule.apply(frames)
        except (ValueError, GeometryError, OSError) as exc:
            raise DataError(f"{spec.path}: {exc}") from exc
        tensors = {"latents": encoders.encode_frames(frames), "fill": encoders.fill_latents(tuple(frames.shape[:3]))}
        low = encoders.encode_global(frames)
        tensors |= {"global_latents": low.latents[0], "global_fill": low.fill[0].clone(), "global_index": low.frame_index}
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
                "pixel_shape": json.dumps(list(frames.shape[:3])), "encoders": encoders.id,
                "fps": repr(fps / rule.frame_stride)}
        save_safetensors(path, tensors, meta)
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
    for key in ("latents", "text_embeds", "text_mask", "fill"):
        if key not in t:
            raise DataError(f"{path}: cache file has no {key!r}; delete it and re-run")
    for key, value in t.items():
        try:
            check_finite_tensor(f"{path}: {key}", value, "the cache file is broken; delete it and re-run to re-encode")
        except NonFiniteError as exc:
            raise DataError(str(exc)) from None
    sample = Sample(meta.get("sample_id", path.stem), t["latents"].float(), t.get("target", t["latents"]).float(),
                    t["text_embeds"].float(), t["text_mask"].long(), meta.get("caption", ""),
                    t["fill"].float(), fps=float(meta.get("fps", DEFAULT_FPS)))
    if "global_latents" in t:
        sample.global_latents = GlobalLatents(t["global_latents"].float()[None], t["global_fill"].float()[None],
                                              t["global_index"].long())
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
    from editctrl_core.edit.masks import pixel_mask_to_token_mask
    from editctrl_core.media.synthetic import make_clip
    from editctrl_core.media.video_io import write_video
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
