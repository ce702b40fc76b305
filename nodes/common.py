"""ComfyUI glue shared by the nodes: custom types, model folders, devices, progress and interruption."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui

log = logging.getLogger("editctrl")

CATEGORY = "EditCtrl"
NO_FILE = "(preset weights)"
MODEL_FOLDERS = ("checkpoints", "diffusion_models")

EditModelType = io.Custom("EDITCTRL_MODEL")
EditVAE = io.Custom("EDITCTRL_VAE")
TextEncoder = io.Custom("EDITCTRL_TEXT_ENCODER")
EditConditioning = io.Custom("EDITCTRL_CONDITIONING")
EditContextType = io.Custom("EDITCTRL_EDIT_CONTEXT")
EditLatents = io.Custom("EDITCTRL_LATENTS")
EditBlend = io.Custom("EDITCTRL_BLEND")
EditRegions = io.Custom("EDITCTRL_REGIONS")


def register_folders() -> None:
    """Add the pack's own model folder (`models/editctrl`) for adapters and TMA weights."""
    if "editctrl" not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path("editctrl", os.path.join(folder_paths.models_dir, "editctrl"))


def _diffusers_folders(kind: str) -> list[str]:
    """Sub-folders of a model folder that hold a diffusers-format LTX-2 (transformer/config.json)."""
    found = []
    for base in folder_paths.get_folder_paths(kind):
        if not os.path.isdir(base):
            continue
        for name in sorted(os.listdir(base)):
            if os.path.isfile(os.path.join(base, name, "transformer", "config.json")):
                found.append(name + "/")
    return found


def list_model_sources() -> list[str]:
    """Choices for the model loader: preset weights, then `folder/file` entries from the model folders."""
    choices = [NO_FILE]
    for kind in MODEL_FOLDERS:
        names = [n for n in folder_paths.get_filename_list(kind) if n.endswith(".safetensors")]
        choices += [f"{kind}/{n}" for n in names + _diffusers_folders(kind)]
    return choices


def resolve_model_source(choice: str) -> Path | None:
    """Absolute path of a loader choice, refusing anything outside ComfyUI's model folders."""
    if choice == NO_FILE:
        return None
    kind, _, name = choice.partition("/")
    if kind not in MODEL_FOLDERS or not name:
        raise ValueError(f"model source {choice!r} must be one of the listed entries")
    if name.endswith("/"):
        for base in folder_paths.get_folder_paths(kind):
            candidate = os.path.realpath(os.path.join(base, name))
            if os.path.commonpath([candidate, os.path.realpath(base)]) != os.path.realpath(base):
                raise ValueError(f"{choice!r} escapes the {kind} folder")
            if os.path.isdir(candidate):
                return Path(candidate)
        raise FileNotFoundError(f"diffusers folder {name} not found in any {kind} folder")
    return Path(folder_paths.get_full_path_or_raise(kind, name))


def pick_device(choice: str) -> torch.device:
    """'auto' → ComfyUI's torch device; otherwise the named device."""
    if choice == "auto":
        return comfy.model_management.get_torch_device()
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was chosen but no CUDA GPU is available; choose 'auto' or 'cpu'")
    return torch.device(choice)


def pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    """'auto' → bf16 on a GPU that supports it, float32 otherwise."""
    if choice == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[choice]


class Progress:
    """A ComfyUI progress bar whose updates also honour the user's interrupt."""

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(total)

    def __call__(self, value: int, total: int, *_: object) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update_absolute(value, total)


def check_interrupt() -> None:
    """Stop here if the user pressed cancel."""
    comfy.model_management.throw_exception_if_processing_interrupted()


def notice(node: str, lines: Iterable[str]) -> ui.PreviewText | None:
    """The node's notices as UI text (shown on the node and kept in /history), each also logged once."""
    kept = [line for line in lines if line]
    for line in kept:
        log.info("%s: %s", node, line)
    return ui.PreviewText("\n".join(kept)) if kept else None

