"""Shared helpers of the training tests: a tiny synthetic config (CPU, seconds) and a trained tiny run."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from training.config import Config, apply_override, config_from_dict

REPO = Path(__file__).resolve().parents[1]


def tiny_config_dict(root: Path, *, clips: int = 3, steps: tuple[int, ...] = (3,), names: tuple[str, ...] = ("scd",),
                     data_dir: Path | None = None) -> dict[str, Any]:
    """Config dict: tiny preset, `clips` synthetic 17x64x96 clips (shared `data_dir` if given), one thread."""
    data = data_dir or root
    stages = []
    for name, n in zip(names, steps):
        st: dict[str, Any] = {"name": name, "steps": n, "lr": 1e-2}
        if name == "scd":
            st["lora"] = {"rank": 2, "alpha": 2, "encoder": True}
        if name == "editctrl_local":
            st["local"] = {"width": 16, "num_blocks": 1, "heads": 2, "head_dim": 8, "target_every": 1}
        if name == "editctrl_global":
            st["global_context"] = {"max_tokens": 16, "heads": 2, "head_dim": 8}
        if name == "tma":
            st["tma"] = {"num_tasks": 2, "num_queries": 4, "num_heads": 4, "mlp_dim": 16, "dropout": 0.0}
        stages.append(st)
    return {
        "model": {"preset": "tiny"},
        "data": {"clips": str(data / "clips"), "cache_dir": str(data / "cache"), "frames": 17, "height": 64,
                 "width": 96, "synthetic": {"count": clips, "frames": 17, "height": 64, "width": 96, "seed": 0}},
        "masks": {"mode": "mixed", "min_area": 0.1, "max_area": 0.6, "semantic_mask_dir": str(data / "object_masks")},
        "train": {"seed": 3, "cpu_threads": 1, "context_frame_ratio": 0.3},
        "output": {"dir": str(root / "run"), "checkpoint_every": 100, "tensorboard": False, "debug_image_every": 0},
        "stages": stages,
    }


def tiny_config(root: Path, overrides: list[str] | None = None, **kwargs: Any) -> Config:
    """Validated tiny config, with `a.b=value` overrides applied."""
    data = copy.deepcopy(tiny_config_dict(root, **kwargs))
    for item in overrides or []:
        apply_override(data, item)
    return config_from_dict(data)
