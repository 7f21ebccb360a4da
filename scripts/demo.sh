#!/usr/bin/env bash
# Set up the venv if needed (reused when present), then run the end-to-end demo (`kpr demo`).
# Arguments go to `kpr demo`, e.g. `bash scripts/demo.sh --out /tmp/kpr-demo`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec "${KPR_VENV:-$root/.venv}/bin/kpr" demo "$@"
