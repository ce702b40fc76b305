#!/usr/bin/env bash
# Set up (idempotent), then run the demo workflow on a real headless ComfyUI: `bash scripts/demo.sh [demo.py args]`.
# Without arguments it runs graphs/editctrl_demo_trained.api.json with the shipped tiny weights (weights/) laid
# out as ComfyUI model folders under out/demo-models.
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
if [ "$#" -eq 0 ]; then
  set -- --workflow graphs/editctrl_demo_trained.api.json
fi
exec "${EDITCTRL_VENV:-$ROOT/.venv}/bin/python" scripts/demo.py --models "$MODELS" "$@"
