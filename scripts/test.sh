#!/usr/bin/env bash
# Set up (idempotent), then run the test suite against a real ComfyUI: `bash scripts/test.sh [pytest args]`.
# The end-to-end tests run on every ComfyUI version setup.sh prepared (0.3.75, and 0.8.0 when ../shared/vendor has
# it; otherwise its tests are skipped with the reason); EDITCTRL_COMFY_VERSIONS=0.3.75 limits them to the ones named.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh || { echo "scripts/test.sh: setup failed" >&2; exit 1; }

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
VENV="${EDITCTRL_VENV:-$ROOT/.venv}"
"$VENV/bin/python" -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests (exit 5) - treating as a failure" >&2
  exit 1
fi
exit "$rc"
