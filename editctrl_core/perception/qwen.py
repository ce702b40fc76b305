"""Qwen2.5-VL / Qwen3-VL: loading from a local folder, a seeded `tiny` preset, grounding and TMA hidden states.

Everything loads with ``local_files_only=True``: nothing here ever reaches a model hub. Weights load only from
``.safetensors`` (``use_safetensors=True``); a folder with only pickles (``.bin``/``.pt``) is refused with the
command that converts it, as every other loader of the pack refuses pickles. The `tiny` preset uses
the real transformers classes with a tiny config, seeded weights and a processor built in code (byte-level BPE
tokenizer, real Qwen image processor, a Qwen-style chat template), so the full path runs on a CPU in seconds.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ..loading.weights_file import save_safetensors
from .detection import (
    FAMILIES,
    Detection,
    DetectionParseError,
    Detections,
    grounding_prompt,
    parse_grounding_answer,
    to_frame_detections,
)

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

EDIT_TEMPLATE = ("These are {k} frames sampled evenly from a video that is being edited. "
                 "After the edit the video shows: {caption}")

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class QwenLoadError(RuntimeError):
    """A Qwen-VL folder that cannot be loaded (missing, wrong model type, missing files)."""


def safetensors_problem(path: str | Path, model_class: str) -> str | None:
    """Why a transformers folder cannot be loaded pickle-free (None when it holds .safetensors weights)."""
    path = Path(path)
    if any(path.glob("*.safetensors")):
        return None
    pickles = sorted(f.name for f in path.iterdir() if f.is_file() and f.suffix in PICKLE_SUFFIXES)
    if not pickles:
        return f"{path} has no .safetensors weights; put the model's *.safetensors files next to its config.json"
    return (f"{path} has only pickle weights ({', '.join(pickles)}); they are not loaded, because unpickling a file "
            "can run code (every EditCtrl loader refuses pickles). Convert them to safetensors once, on a machine you "
            f"trust: python -c \"import transformers as t; t.{model_class}.from_pretrained(r'{path}')"
            f".save_pretrained(r'{path}')\" (writes model.safetensors), or download the model's safetensors release")


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """Torch dtype for a user option: 'auto' is bf16 on a GPU that supports it, else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected 'auto' or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _model_class(family: str) -> type:
    """The transformers generation class for a Qwen-VL family."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

    classes = {"qwen2_5_vl": Qwen2_5_VLForConditionalGeneration, "qwen3_vl": Qwen3VLForConditionalGeneration}
    if family not in classes:
        raise QwenLoadError(f"unsupported Qwen-VL model type {family!r}; supported: {sorted(classes)}")
    return classes[family]


@dataclass(eq=False)
class QwenVL:
    """A loaded Qwen-VL model + processor, with where it runs and an identity used for caching."""

    model: Any
    processor: Any
    family: str
    name: str
    fingerprint: str
    device: torch.device
    dtype: torch.dtype
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def loaded(self) -> bool:
        """Whether the weights are still held (False after `unload`)."""
        return self.model is not None

    def require_model(self) -> Any:
        """The model, moved to its run device; raises if it was unloaded."""
        if self.model is None:
            raise RuntimeError(f"Qwen-VL model {self.name!r} was unloaded; load it again")
        if _module_device(self.model) != self.device:
            self.model.to(self.device)
        return self.model

    @property
    def patch_size(self) -> int:
        """Vision patch size the processor resizes to (14 for Qwen2.5-VL, 16 for Qwen3-VL)."""
        return int(self.processor.image_processor.patch_size)

    @property
    def hidden_size(self) -> int:
        """Width of the language model's hidden states (3584 for Qwen2.5-VL-7B)."""
        if self.model is None:
            raise RuntimeError(f"Qwen-VL model {self.name!r} was unloaded")
        return int(self.model.config.get_text_config().hidden_size)

    def offload(self, device: str | torch.device = "cpu") -> None:
        """Move the weights off the run device (kept in memory) until the next use moves them back."""
        if self.model is not None:
            self.model.to(device)
            _empty_cache()

    def unload(self) -> None:
        """Drop the weights entirely and free their memory; the object keeps only its name."""
        self.model = None
        gc.collect()
        _empty_cache()


def _module_device(module: torch.nn.Module) -> torch.device:
    """Device of a module's first parameter."""
    return next(module.parameters()).device


def _empty_cache() -> None:
    """Release cached accelerator memory if there is an accelerator."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def folder_fingerprint(path: str | Path) -> str:
    """Content identity of a model folder: its config plus the names and sizes of its safetensors weights."""
    path = Path(path)
    h = hashlib.sha256()
    config = path / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for f in sorted(path.iterdir()):
        if f.suffix == ".safetensors" and f.is_file():
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def read_model_type(path: str | Path) -> str:
    """The `model_type` in a transformers folder's config.json."""
    config = Path(path) / "config.json"
    if not config.is_file():
        raise QwenLoadError(f"{path} has no config.json; expected a transformers model folder "
                            "(e.g. models/LLM/Qwen2.5-VL-7B-Instruct)")
    return str(json.loads(config.read_text()).get("model_type", ""))


def load_qwen_vl(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto",
                 attn_implementation: str | None = None) -> QwenVL:
    """Load Qwen2.5-VL or Qwen3-VL (chosen by config.json's model_type) and its processor from a local folder.

    Only .safetensors weights are read; a folder with only pickles is a QwenLoadError that says how to convert.
    """
    from transformers import AutoProcessor

    path = Path(path)
    if not path.is_dir():
        raise QwenLoadError(f"Qwen-VL folder {path} does not exist")
    family = read_model_type(path)
    if family not in FAMILIES:
        raise QwenLoadError(f"{path} holds a {family!r} model; supported Qwen-VL types: {FAMILIES}")
    model_class = _model_class(family)
    problem = safetensors_problem(path, model_class.__name__)
    if problem:
        raise QwenLoadError(problem)
    torch_dtype = resolve_dtype(dtype, device)
    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": True, "dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = model_class.from_pretrained(str(path), **kwargs).eval()
    processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
    model.to(device)
    return QwenVL(model, processor, family, path.name, folder_fingerprint(path), _module_device(model), torch_dtype)


def tiny_tokenizer() -> Any:
    """A byte-level Qwen2 tokenizer over the 256 byte symbols + Qwen's special tokens (any text round-trips)."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    return Qwen2Tokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", eos_token="<|im_end|>",
                          pad_token="<|endoftext|>", additional_special_tokens=list(SPECIAL_TOKENS[1:]))


def tiny_processor(family: str = "qwen2_5_vl") -> Any:
    """The real Qwen processor class with the tiny tokenizer, a small-resolution image processor and a chat template."""
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tokenizer = tiny_tokenizer()
    if family == "qwen2_5_vl":
        image = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2,
                                      min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
        return Qwen2_5_VLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                                   chat_template=CHAT_TEMPLATE)
    if family == "qwen3_vl":
        image = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                      min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 64)
        return Qwen3VLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=Qwen3VLVideoProcessor(),
                                chat_template=CHAT_TEMPLATE)
    raise ValueError(f"unknown Qwen-VL family {family!r}; expected one of {FAMILIES}")


def tiny_config(family: str, tokenizer: Any) -> Any:
    """A tiny but structurally complete config for a Qwen-VL family, with token ids from `tokenizer`."""
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    common = {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
              "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"]}
    text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            "pad_token_id": ids["<|endoftext|>"]}
    if family == "qwen2_5_vl":
        text.update(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
                    bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 14,
                  "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56, "out_hidden_size": 32,
                  "fullatt_block_indexes": [1]}
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    if family == "qwen3_vl":
        text.update(head_dim=8, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                 "mrope_section": [2, 1, 1], "mrope_interleaved": True})
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 16,
                  "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 32,
                  "num_position_embeddings": 64, "deepstack_visual_indexes": [1]}
        return Qwen3VLConfig(text_config=text, vision_config=vision, **common)
    raise ValueError(f"unknown Qwen-VL family {family!r}; expected one of {FAMILIES}")


def tiny_qwen_vl(family: str = "qwen2_5_vl", seed: int = 0, device: str | torch.device = "cpu") -> QwenVL:
    """The `tiny` preset: real Qwen-VL classes, tiny config, weights seeded by `seed`, processor built in code."""
    processor = tiny_processor(family)
    tokenizer = processor.tokenizer
    config = tiny_config(family, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _model_class(family)(config).eval()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config.do_sample = False
    model.to(device)
    return QwenVL(model, processor, family, f"tiny-{family}", f"tiny:{family}:seed{seed}", _module_device(model),
                  torch.float32)


def load_or_tiny(name_or_path: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto") -> QwenVL:
    """`tiny`, `tiny-qwen2_5_vl` or `tiny-qwen3_vl` give the tiny preset; anything else is a local folder."""
    if name_or_path in ("tiny", "tiny-qwen2_5_vl"):
        return tiny_qwen_vl("qwen2_5_vl", device=device)
    if name_or_path == "tiny-qwen3_vl":
        return tiny_qwen_vl("qwen3_vl", device=device)
    return load_qwen_vl(name_or_path, device=device, dtype=dtype)


def frame_to_uint8(frame: Any) -> np.ndarray:
    """One HxWx3 frame (uint8, or float in 0..1; numpy or torch) as a contiguous uint8 numpy array."""
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu()
        if frame.dtype.is_floating_point:
            frame = (frame.float().clamp(0, 1) * 255).round().to(torch.uint8)
        arr = frame.numpy()
    else:
        arr = np.asarray(frame)
        if arr.dtype.kind == "f":
            arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be HxWx3; got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr.astype(np.uint8, copy=False))


def _frame_list(frames: Any) -> list[Any]:
    """Frames as an indexable list: a [F,H,W,3] tensor/array or a sequence of HxWx3 frames."""
    if isinstance(frames, (torch.Tensor, np.ndarray)):
        if frames.ndim == 3:
            return [frames]
        if frames.ndim != 4:
            raise ValueError(f"frames must be [F,H,W,3]; got shape {tuple(frames.shape)}")
        return [frames[i] for i in range(frames.shape[0])]
    return list(frames)


def evenly_spaced(num_frames: int, k: int) -> list[int]:
    """`k` frame indices spread evenly over `num_frames` including both ends (fewer if the clip is shorter)."""
    if num_frames < 1 or k < 1:
        raise ValueError(f"need at least one frame and k >= 1; got num_frames={num_frames}, k={k}")
    if k == 1:
        return [0]
    return sorted({round(i * (num_frames - 1) / (k - 1)) for i in range(k)})


def _inputs_to(inputs: Any, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Processor outputs on the model device, pixel values in the model dtype."""
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if key.startswith("pixel_values"):
                value = value.to(dtype)
        out[key] = value
    return out


def _image_kwargs(max_pixels: int | None, processor: Any) -> dict[str, Any]:
    """Processor kwargs that cap the resized image area, if asked."""
    if max_pixels is None:
        return {}
    size = dict(processor.image_processor.size)
    size["longest_edge"] = int(max_pixels)
    return {"size": size}


def generate_answers(qwen: QwenVL, images: Sequence[np.ndarray], prompt: str, max_new_tokens: int = 512,
                     logits_processor: Any = None, max_pixels: int | None = None) -> tuple[list[str], torch.Tensor]:
    """Run `generate()` once over a batch of images with the same prompt; returns answers and image_grid_thw."""
    from transformers import LogitsProcessorList

    processor = qwen.processor
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
    tokenizer = processor.tokenizer
    with qwen.lock:
        model = qwen.require_model()
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            inputs = processor(text=[text] * len(images), images=list(images), padding=True, return_tensors="pt",
                               **_image_kwargs(max_pixels, processor))
        finally:
            tokenizer.padding_side = side
        grid = inputs["image_grid_thw"].clone()
        inputs = _inputs_to(inputs, qwen.device, qwen.dtype)
        pad_id = model.generation_config.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.pad_token_id
        kwargs: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "do_sample": False, "pad_token_id": pad_id}
        if logits_processor is not None:
            kwargs["logits_processor"] = LogitsProcessorList(
                logits_processor if isinstance(logits_processor, Sequence) else [logits_processor])
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")
            out = model.generate(**inputs, **kwargs)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    answers = processor.batch_decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [a.strip() for a in answers], grid


def detect(qwen: QwenVL, frames: Any, keyframes: Sequence[int] | None = None, prompt_mode: str = "all",
           categories: Sequence[str] | None = None, text: str | None = None, max_new_tokens: int = 512,
           batch_size: int = 4, merge_iou: float | None = 0.7, min_size: float = 1.0, max_pixels: int | None = None,
           on_error: str = "raise", logits_processor: Any = None) -> Detections:
    """Ground objects on the chosen keyframes with `generate()`, parse the answers and map boxes to frame pixels.

    `frames` is a ComfyUI IMAGE [F,H,W,3] (float 0..1) or a list of HxWx3 uint8/float frames. `on_error='skip'`
    turns an unparseable answer into an empty keyframe plus a warning instead of a DetectionParseError.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip'; got {on_error!r}")
    frame_list = _frame_list(frames)
    if not frame_list:
        raise ValueError("detect() needs at least one frame")
    keys = sorted(set(keyframes if keyframes is not None else [0]))
    for k in keys:
        if not 0 <= k < len(frame_list):
            raise IndexError(f"keyframe {k} is outside the clip of {len(frame_list)} frames")
    prompt = grounding_prompt(qwen.family, prompt_mode, categories, text)
    images = {k: frame_to_uint8(frame_list[k]) for k in keys}
    height, width = images[keys[0]].shape[:2]
    result = Detections(width=int(width), height=int(height), num_frames=len(frame_list), family=qwen.family)
    for chunk_start in range(0, len(keys), max(1, batch_size)):
        chunk = keys[chunk_start:chunk_start + max(1, batch_size)]
        answers, grids = generate_answers(qwen, [images[k] for k in chunk], prompt, max_new_tokens,
                                          logits_processor, max_pixels)
        for row, k in enumerate(chunk):
            result.raw[k] = answers[row]
            try:
                parsed = parse_grounding_answer(answers[row])
            except DetectionParseError as err:
                if on_error == "raise":
                    raise DetectionParseError(f"keyframe {k}: {err.reason}", err.text) from err
                warnings.warn(f"keyframe {k}: {err}", stacklevel=2)
                parsed = []
            result.frames[k] = to_frame_detections(parsed, qwen.family, int(width), int(height),
                                                   grid_thw=grids[row].tolist(), patch_size=qwen.patch_size,
                                                   min_size=min_size, merge_iou=merge_iou)
    return result


def detections_from_answer(answer: str, family: str, width: int, height: int, grid_thw: Sequence[int] | None = None,
                           patch_size: int = 14, merge_iou: float | None = 0.7) -> list[Detection]:
    """Parse one answer and map it to frame pixels (the `detect` path without the model, for tools and tests)."""
    return to_frame_detections(parse_grounding_answer(answer), family, width, height, grid_thw, patch_size,
                               merge_iou=merge_iou)


class HiddenStateCache:
    """Qwen hidden states by content hash: an in-memory LRU, optionally backed by a folder of safetensors files."""

    def __init__(self, max_items: int = 16, cache_dir: str | Path | None = None) -> None:
        """An empty cache holding at most `max_items` tensors in memory (and unbounded on disk if `cache_dir`)."""
        self.max_items = max_items
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path | None:
        """Disk location of a key, if the cache has a folder."""
        return self.cache_dir / f"{key}.safetensors" if self.cache_dir is not None else None

    def get(self, key: str) -> torch.Tensor | None:
        """The cached tensor for `key` (memory first, then disk), or None."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        path = self._path(key)
        if path is not None and path.is_file():
            tensor = load_file(str(path))["hidden_states"]
            self._remember(key, tensor)
            self.hits += 1
            return tensor
        self.misses += 1
        return None

    def _remember(self, key: str, tensor: torch.Tensor) -> None:
        """Insert into the in-memory LRU, evicting the least recently used beyond `max_items`."""
        with self._lock:
            self._items[key] = tensor
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def put(self, key: str, tensor: torch.Tensor, metadata: dict[str, str] | None = None) -> None:
        """Store `tensor` (CPU) under `key` in memory and, atomically, on disk."""
        tensor = tensor.detach().cpu().contiguous()
        self._remember(key, tensor)
        path = self._path(key)
        if path is None:
            return
        save_safetensors(path, {"hidden_states": tensor}, metadata or {})

    def clear(self) -> None:
        """Forget the in-memory entries (files on disk stay)."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        """Number of in-memory entries."""
        return len(self._items)


DEFAULT_HIDDEN_CACHE = HiddenStateCache()


def hidden_state_key(qwen: QwenVL, images: Sequence[np.ndarray], caption: str, template: str,
                     max_pixels: int | None = None) -> str:
    """Content hash of everything that determines the hidden states: model, dtype, resolution cap, frames, text."""
    h = hashlib.sha256()
    h.update(f"{qwen.family}|{qwen.fingerprint}|{qwen.dtype}|{max_pixels}|{len(images)}".encode())
    for img in images:
        h.update(str(img.shape).encode())
        h.update(img.tobytes())
    h.update(template.encode())
    h.update(b"\x00")
    h.update(caption.encode())
    return h.hexdigest()[:32]


def _compute_hidden_states(qwen: QwenVL, images: Sequence[np.ndarray], text: str,
                           max_pixels: int | None) -> torch.Tensor:
    """One forward of the Qwen backbone (no LM head) over frames + text; last hidden layer [1, L, hidden]."""
    content: list[dict[str, str]] = [{"type": "image"} for _ in images]
    content.append({"type": "text", "text": text})
    prompt = qwen.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                add_generation_prompt=False)
    inputs = qwen.processor(text=[prompt], images=list(images), return_tensors="pt",
                            **_image_kwargs(max_pixels, qwen.processor))
    with qwen.lock, torch.inference_mode():
        model = qwen.require_model()
        out = model.model(**_inputs_to(inputs, qwen.device, qwen.dtype))
    return out.last_hidden_state.detach().cpu()


def hidden_states(qwen: QwenVL, frames: Any, caption: str, k_frames: int = 4, template: str = EDIT_TEMPLATE,
                  cache: HiddenStateCache | None = None, use_cache: bool = True,
                  max_pixels: int | None = None) -> torch.Tensor:
    """Qwen's last hidden layer [1, L, hidden] over K evenly spaced frames + the editing template with the caption.

    Cached by a content hash (model, dtype, the sampled frames' pixels, template, caption) so re-running a
    workflow does not re-run Qwen; `cache` defaults to the process-wide in-memory LRU.
    """
    if "{caption}" not in template:
        raise ValueError("the editing template must contain '{caption}' (and may contain '{k}', the frame count)")
    frame_list = _frame_list(frames)
    if not frame_list:
        raise ValueError("hidden_states() needs at least one frame")
    indices = evenly_spaced(len(frame_list), k_frames)
    images = [frame_to_uint8(frame_list[i]) for i in indices]
    text = template.format(k=len(images), caption=caption.strip())
    store = cache if cache is not None else DEFAULT_HIDDEN_CACHE
    key = hidden_state_key(qwen, images, caption.strip(), template, max_pixels)
    if use_cache:
        hit = store.get(key)
        if hit is not None:
            return hit
    states = _compute_hidden_states(qwen, images, text, max_pixels)
    if use_cache:
        store.put(key, states, {"model": qwen.name, "family": qwen.family, "frames": json.dumps(indices)})
    return states


def batch_hidden_states(qwen: QwenVL, clips: Sequence[Any], captions: Sequence[str], k_frames: int = 4,
                        template: str = EDIT_TEMPLATE, cache: HiddenStateCache | None = None,
                        use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states for several (clip, caption) pairs, right-padded: ([B, L, hidden], bool mask [B, L])."""
    if len(clips) != len(captions):
        raise ValueError(f"got {len(clips)} clips but {len(captions)} captions")
    states = [hidden_states(qwen, c, t, k_frames, template, cache, use_cache)[0] for c, t in zip(clips, captions)]
    length = max(s.shape[0] for s in states)
    out = states[0].new_zeros(len(states), length, states[0].shape[-1])
    mask = torch.zeros(len(states), length, dtype=torch.bool)
    for i, s in enumerate(states):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    return out, mask
