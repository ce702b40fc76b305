"""Where the perception models live (ComfyUI's `models/LLM` for Qwen-VL, `models/sams` for SAM) and the set of
loaded models whose weights leave the GPU after each use."""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

import folder_paths

LLM_FOLDER = "LLM"
SAM_FOLDER = "sams"

# Models whose weights leave the GPU after each use (chosen on their loader); weak so dropped models are not kept.
_OFFLOAD_AFTER_USE: weakref.WeakSet[Any] = weakref.WeakSet()


def register_detection_folders() -> None:
    """Register ComfyUI model folders `models/LLM` (Qwen-VL) and `models/sams` (SAM) if they are not known yet."""
    for name in (LLM_FOLDER, SAM_FOLDER):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))


register_detection_folders()


def model_folders(kind: str) -> list[str]:
    """Names of the sub-folders of ComfyUI's `kind` model folders that hold a transformers model (config.json)."""
    found: list[str] = []
    for base in folder_paths.get_folder_paths(kind):
        if not os.path.isdir(base):
            continue
        for name in sorted(os.listdir(base)):
            if os.path.isfile(os.path.join(base, name, "config.json")) and name not in found:
                found.append(name)
    return found


def resolve_model_folder(kind: str, name: str) -> Path:
    """Absolute path of `models/<kind>/<name>`; names with path separators or '..' are refused."""
    if not name or name in (".", "..") or os.path.isabs(name) or "/" in name or "\\" in name:
        raise ValueError(f"{name!r} is not a folder name inside models/{kind}; pick one of the listed models")
    for base in folder_paths.get_folder_paths(kind):
        candidate = os.path.join(base, name)
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return Path(candidate)
    raise FileNotFoundError(f"no model folder {name!r} with a config.json in {folder_paths.get_folder_paths(kind)}; "
                            f"put the transformers model folder under models/{kind}/")


def release(model: Any) -> None:
    """Move a Qwen-VL or SAM model's weights off the GPU if its loader asked for offloading after use."""
    if model in _OFFLOAD_AFTER_USE and model.device.type != "cpu":
        model.offload("cpu")


def mark_offload_after_use(model: Any) -> None:
    """Mark a loaded Qwen-VL or SAM model for offloading to the CPU after each use (its loader's choice)."""
    _OFFLOAD_AFTER_USE.add(model)
