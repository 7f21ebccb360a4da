#!/usr/bin/env bash
# Set up the venv if needed (reused when present), then run the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec "${KPR_VENV:-$root/.venv}/bin/python" -m pytest "$@"
