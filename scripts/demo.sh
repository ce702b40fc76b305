#!/usr/bin/env bash
# Set up (idempotent), then run the demo workflow on a real headless ComfyUI: `bash scripts/demo.sh [demo.py args]`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "${EDITCTRL_VENV:-$ROOT/.venv}/bin/python" scripts/demo.py "$@"
