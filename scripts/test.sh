#!/usr/bin/env bash
# Set up (idempotent), then run the test suite against a real ComfyUI: `bash scripts/test.sh [pytest args]`.
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
