#!/usr/bin/env bash
# Set up (idempotent), then run an edit on a real headless ComfyUI: `bash scripts/demo.sh [demo.py args]`.
#   bash scripts/demo.sh                                    # the demo clip, graphs/editctrl_demo_trained.api.json
#   bash scripts/demo.sh --input CLIP [--mask-box x,y,w,h | --mask MASKFILE] [--prompt TEXT]   # your own clip
# The shipped tiny weights (weights/) are laid out as ComfyUI model folders under out/demo-models; see
# `bash scripts/demo.sh --help` for every option (scripts/demo.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
MODELS="$ROOT/out/demo-models"
mkdir -p "$MODELS/checkpoints" "$MODELS/loras" "$MODELS/editctrl"
ln -sf "$ROOT/weights/editctrl_tiny.safetensors" "$MODELS/checkpoints/editctrl_tiny.safetensors"
ln -sf "$ROOT/weights/editctrl_tiny_lora.safetensors" "$MODELS/loras/editctrl_tiny_lora.safetensors"
ln -sf "$ROOT/weights/editctrl_tiny_local.safetensors" "$MODELS/editctrl/editctrl_tiny_local.safetensors"
ln -sf "$ROOT/weights/editctrl_tiny_global.safetensors" "$MODELS/editctrl/editctrl_tiny_global.safetensors"
exec "${EDITCTRL_VENV:-$ROOT/.venv}/bin/python" scripts/demo.py --models "$MODELS" "$@"
