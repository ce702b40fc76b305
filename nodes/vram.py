"""ComfyUI model management for EditCtrl's models (editctrl_core never imports ComfyUI, so it lives here).

`patcher_for(module)` wraps an nn.Module (the diffusers transformer or VAE, a text encoder's Gemma + connectors) in
a `comfy.model_patcher.ModelPatcher`. `load(...)` hands the patchers to `comfy.model_management.load_models_gpu`,
which first frees other models if the GPU is short, moves ours onto the load device and records them in
`current_loaded_models`; from then on ComfyUI's "Unload models" button / `POST /free`, and its own memory pressure
when another model needs room, offload them to the CPU. `unload(...)` offloads explicitly (text encoder after
encoding). Models are loaded fully (`force_full_load`): our layers do not stream weights per call, so ComfyUI's
partial "lowvram" loading is not used.

Interrupts: a cancelled prompt never leaves an unregistered model on the GPU — anything we put there went through
`load` and is in `current_loaded_models`, so `/free` (or the next model load) reclaims it; the text encoder's
`offload_after_encode` unloads in a `finally`.

`GET /editctrl/vram` lists our entries in `current_loaded_models` (name, devices, MB) for tests and debugging.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import comfy.model_management as mm
import torch
from comfy.model_patcher import ModelPatcher
from torch import nn

log = logging.getLogger("editctrl")
_ATTR = "_editctrl_patcher"


class ManagedModule(nn.Module):
    """Container ModelPatcher can move: a plain `device` attribute (diffusers models expose a read-only property)."""

    def __init__(self, inner: nn.Module, name: str, device: torch.device):
        """Wrap `inner`, currently on `device`."""
        super().__init__()
        self.inner = inner
        self.device = device
        self.editctrl_name = name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped module."""
        return self.inner(*args, **kwargs)


def _module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter (CPU if it has none)."""
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class EditCtrlPatcher(ModelPatcher):
    """ModelPatcher of one of our modules: unloading it (ComfyUI's /free, memory pressure) also drops the sampler's
    cross-edit caches (prepared steps, CUDA graphs, encoder outputs), which hold device memory of that model."""

    def detach(self, *args: Any, **kwargs: Any) -> Any:
        try:
            from ..editctrl_core.edit.fast_decode import clear_caches
        except ImportError:  # vram.py loaded on its own (a test), with editctrl_core importable at the top level
            from editctrl_core.edit.fast_decode import clear_caches
        clear_caches()
        return super().detach(*args, **kwargs)


def patcher_for(module: nn.Module, name: str | None = None, load_device: torch.device | None = None,
                offload_device: torch.device | None = None) -> ModelPatcher:
    """The ModelPatcher of `module` (created once and kept on the module; devices default to ComfyUI's choice)."""
    load_device = torch.device(load_device) if load_device is not None else mm.get_torch_device()
    offload_device = torch.device(offload_device) if offload_device is not None else mm.unet_offload_device()
    existing: ModelPatcher | None = module.__dict__.get(_ATTR)
    if existing is not None and existing.load_device == load_device and existing.offload_device == offload_device:
        return existing
    if existing is not None:
        unload(module)
    cls = type(f"EditCtrl_{type(module).__name__}", (ManagedModule,), {})  # ComfyUI logs the class name
    container = cls(module, name or type(module).__name__, _module_device(module))
    patcher = EditCtrlPatcher(container, load_device=load_device, offload_device=offload_device,
                           size=mm.module_size(module))
    object.__setattr__(module, _ATTR, patcher)
    return patcher


def load(*modules: nn.Module, memory_required: int = 0) -> None:
    """Put modules on their load device through ComfyUI (freeing other models first) and register them."""
    patchers = [patcher_for(m) if _ATTR not in m.__dict__ else m.__dict__[_ATTR] for m in modules]
    mm.load_models_gpu(patchers, memory_required=memory_required, force_full_load=True)


def _ours(loaded: Any) -> bool:
    """Whether a `LoadedModel` entry is one of this pack's models."""
    patcher = loaded.model
    return patcher is not None and isinstance(getattr(patcher, "model", None), ManagedModule)


def unload(*modules: nn.Module) -> int:
    """Offload modules to their offload device and drop them from `current_loaded_models`; returns how many."""
    targets = [m.__dict__.get(_ATTR) for m in modules]
    targets = [t for t in targets if t is not None]
    count = 0
    for i in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[i]
        if any(loaded.model is t for t in targets):
            loaded.model_unload()
            mm.current_loaded_models.pop(i)
            count += 1
    for t in targets:  # never registered / already evicted: still make sure nothing stays on the GPU
        if _module_device(t.model.inner) != t.offload_device:
            t.model.to(t.offload_device)
            t.model.device = t.offload_device
    if count:
        mm.soft_empty_cache()
    return count


def is_registered(module: nn.Module) -> bool:
    """Whether ComfyUI currently tracks `module` as loaded."""
    patcher = module.__dict__.get(_ATTR)
    return patcher is not None and any(lm.model is patcher for lm in mm.current_loaded_models)


def status() -> list[dict[str, Any]]:
    """Our entries in `current_loaded_models`: name, load device, current device, loaded and total MB."""
    out = []
    for loaded in mm.current_loaded_models:
        if not _ours(loaded):
            continue
        patcher = loaded.model
        out.append({
            "name": patcher.model.editctrl_name,
            "load_device": str(loaded.device),
            "current_device": str(_module_device(patcher.model.inner)),
            "loaded_mb": round(patcher.loaded_size() / 2**20, 3),
            "size_mb": round(patcher.model_size() / 2**20, 3),
        })
    return out


@contextlib.contextmanager
def on_device(*modules: nn.Module, offload_after: bool = False) -> Iterator[None]:
    """Modules loaded (and registered) inside the block; unloaded after it when `offload_after`, also on errors."""
    load(*modules)
    try:
        yield
    finally:
        if offload_after:
            unload(*modules)


class ComfyManagedDevices:
    """`editctrl_core.conditioning.text_encoders.DeviceManager` backed by ComfyUI's model management."""

    def __init__(self, name: str = "text_encoder"):
        """`name` is what ComfyUI's loaded-model list and `/editctrl/vram` show."""
        self.name = name

    def load(self, encoder: Any) -> None:
        """Load the encoder's modules onto its device through ComfyUI."""
        patcher_for(encoder.module, self.name, encoder.device, encoder.offload_device)
        load(encoder.module)

    def unload(self, encoder: Any) -> None:
        """Offload the encoder's modules and unregister them."""
        unload(encoder.module)


def manage_text_encoder(encoder: Any, name: str | None = None) -> Any:
    """Attach ComfyUI memory management to an `LTXTextEncoder` (returns it)."""
    encoder.manager = ComfyManagedDevices(name or f"{encoder.family} text encoder")
    patcher_for(encoder.module, encoder.manager.name, encoder.device, encoder.offload_device)
    return encoder


def _register_route() -> None:
    """Expose `GET /editctrl/vram` (our entries in ComfyUI's loaded-model list)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is None or getattr(instance, "_editctrl_vram_route", False):
        return

    @instance.routes.get("/editctrl/vram")
    async def editctrl_vram(request: web.Request) -> web.Response:
        """JSON: our models in ComfyUI's loaded-model list."""
        return web.json_response({"models": status(), "loaded_models_total": len(mm.current_loaded_models)})

    instance._editctrl_vram_route = True


_register_route()
