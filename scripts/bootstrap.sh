#!/usr/bin/env bash
# Create (or reuse) .venv and install the project with its dev extras.
# Re-installs only when pyproject.toml changed since the last successful install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KPR_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[bootstrap] creating virtual environment at $venv" >&2
  "$py" -m venv "$venv"
fi
stamp="$venv/.kpr-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing dependencies into $venv (first run takes a few minutes)" >&2
  "$venv/bin/pip" install --quiet --upgrade pip
  # torch first, pinned, so that no other package pulls a CUDA build from the registry.
  "$venv/bin/pip" install --quiet "torch==2.14.1" "torchvision==0.29.1"
  "$venv/bin/pip" install --quiet -e "$root[dev]"
  echo "$want" > "$stamp"
fi
