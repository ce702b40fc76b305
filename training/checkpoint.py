"""Atomic, pickle-free training checkpoints: LoRA/adapter files plus a state folder for exact resume.

Layout in the output folder at step N (global optimiser step)::

    lora_weights_step_0000N.safetensors       (ComfyUI-native keys, via editctrl_core.loading.lora.save_lora)
    local_context_step_0000N.safetensors      (when the run has one; editctrl_core.edit.adapters.save_adapter)
    global_context_step_0000N.safetensors
    tma_step_0000N.safetensors
    state_step_0000N/                         trainable.safetensors, optimizer.safetensors, rng.safetensors,
                                              state.json (step, stage, scheduler, optimizer scalars, config hash)
    latest.json                               → the newest complete state folder

Every file is written under a temporary name and renamed; the state folder is assembled under a temporary name and
renamed as a whole, and `latest.json` is replaced last, so a kill at any instant leaves the previous checkpoint
usable. Tensors go to safetensors, everything else to JSON: nothing is ever pickled.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from editctrl_core.loading.weights_file import save_safetensors, write_text

LATEST = "latest.json"


def step_name(prefix: str, step: int, suffix: str = ".safetensors") -> str:
    """`prefix_step_NNNNN.suffix` (five digits, as the seed names LoRA checkpoints)."""
    return f"{prefix}_step_{step:05d}{suffix}"






def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested structure by {"__tensor__": key} references, collecting them in `tensors`."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "value"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, f"{prefix}.k{i}", tensors), _flatten(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        kind = "__tuple__" if isinstance(obj, tuple) else "__list__"
        return {kind: [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {prefix} without pickle")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `_flatten`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        if "__list__" in obj:
            return [_unflatten(v, tensors) for v in obj["__list__"]]
    return obj


def _read(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file."""
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch CPU/CUDA RNG states (tensors) and Python's `random` state (JSON)."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    py = random.getstate()
    return tensors, {"python": [py[0], list(py[1]), py[2]]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    py = meta.get("python")
    if py:
        random.setstate((py[0], tuple(py[1]), py[2]))


def save_state(out_dir: Path, step: int, *, trainable: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, extra: dict[str, Any],
               extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `state_step_NNNNN/` atomically (temp folder + rename) and point latest.json at it."""
    final = out_dir / step_name("state", step, "")
    tmp = out_dir / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_safetensors(tmp / "trainable.safetensors", trainable)
    opt_tensors: dict[str, torch.Tensor] = {}
    opt_struct = _flatten(optimizer.state_dict(), "opt", opt_tensors)
    save_safetensors(tmp / "optimizer.safetensors", opt_tensors or {"empty": torch.zeros(0)})
    rng_tensors, rng_meta = rng_state()
    rng_tensors.update(extra_tensors or {})
    save_safetensors(tmp / "rng.safetensors", rng_tensors)
    state = {"step": step, "optimizer": opt_struct, "scheduler": _flatten(scheduler.state_dict(), "sched", {}),
             "rng": rng_meta, **extra}
    write_text(tmp / "state.json", json.dumps(state))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_text(out_dir / LATEST, json.dumps({"step": step, "state": final.name}))
    return final


def latest_state(out_dir: Path) -> Path | None:
    """The state folder latest.json points at, if it is complete."""
    pointer = out_dir / LATEST
    if not pointer.is_file():
        return None
    name = json.loads(pointer.read_text())["state"]
    path = out_dir / name
    return path if (path / "state.json").is_file() else None


def load_state(path: Path) -> dict[str, Any]:
    """Read a state folder: {'state': json, 'trainable': tensors, 'optimizer': state_dict, 'rng': tensors}."""
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint state folder (no state.json)")
    state = json.loads((path / "state.json").read_text())
    opt_tensors = _read(path / "optimizer.safetensors")
    return {"state": state, "trainable": _read(path / "trainable.safetensors"),
            "optimizer": _unflatten(state["optimizer"], opt_tensors),
            "scheduler": _unflatten(state["scheduler"], {}), "rng": _read(path / "rng.safetensors")}


def prune(out_dir: Path, keep: int) -> None:
    """Keep only the newest `keep` checkpoints (state folders and step files); 0 keeps all."""
    if keep <= 0:
        return
    states = sorted(out_dir.glob("state_step_*"), key=lambda p: p.name)
    steps = [p.name.split("_")[-1] for p in states if not p.name.startswith(".")]
    for old in steps[:-keep]:
        for p in out_dir.glob(f"*_step_{old}*"):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
