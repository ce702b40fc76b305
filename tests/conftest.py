"""Shared pytest set-up: offline hubs, repo root on sys.path, one real ComfyUI server per session."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REPO_ROOT = Path(__file__).resolve().parent.parent
for _p in (REPO_ROOT, REPO_ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from comfy_server import ComfyServer  # noqa: E402

#: Model folders created under the server's base dir and registered through extra_model_paths.
MODEL_FOLDERS = (
    "checkpoints",
    "diffusion_models",
    "loras",
    "editctrl",
    "LLM",
    "sams",
    "text_encoders",
    "upscale_models",
    "vae",
)


def comfy_dir() -> Path:
    """The ComfyUI tree: $COMFYUI_DIR, else .cache/comfyui under the repo (made by scripts/setup.sh)."""
    d = Path(os.environ.get("COMFYUI_DIR") or REPO_ROOT / ".cache" / "comfyui")
    if not (d / "main.py").is_file():
        pytest.exit(f"no ComfyUI at {d}: run scripts/setup.sh first", returncode=2)
    return d


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """One ComfyUI server for the test session; drop model files under `server.models_dir / <folder>`."""
    base = tmp_path_factory.mktemp("comfy_server")
    models_dir = base / "models"  # == server.models_dir
    server = ComfyServer(
        base,
        comfy_dir(),
        python=sys.executable,
        model_paths={name: models_dir / name for name in MODEL_FOLDERS},
    )
    with server:
        yield server
