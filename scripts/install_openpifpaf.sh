#!/usr/bin/env bash
# Install the optional `openpifpaf` detection + pose backend into the project's virtualenv.
# OpenPifPaf 0.13.11 pins torch 1.13 and compiles its decoder with -std=c++17, which the torch 2.x
# headers of this project reject: build it from its source release with C++20 against the installed torch,
# without its pins. Needs a C++ compiler; compiling takes minutes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KPR_VENV:-$root/.venv}"
version="${OPENPIFPAF_VERSION:-0.13.11}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "[openpifpaf] downloading the openpifpaf $version source release" >&2
"$venv/bin/pip" download --quiet --no-deps --no-binary :all: --no-build-isolation "openpifpaf==$version" -d "$work"
tar -xzf "$work/openpifpaf-$version.tar.gz" -C "$work"
sed -i 's/-std=c++17/-std=c++20/' "$work/openpifpaf-$version/setup.py"
# matplotlib >= 3.9 dropped matplotlib.cm.get_cmap, which its visualizers call at import time.
grep -rl 'matplotlib.cm.get_cmap(' "$work/openpifpaf-$version/src" | xargs -r sed -i 's/matplotlib\.cm\.get_cmap(/matplotlib.colormaps.get_cmap(/g'
echo "[openpifpaf] compiling and installing (a few minutes)" >&2
"$venv/bin/pip" install --quiet --no-deps --no-build-isolation "$work/openpifpaf-$version"
"$venv/bin/pip" install --quiet pysparkling importlib_metadata python-json-logger
"$venv/bin/python" -c "import openpifpaf; print('[openpifpaf] installed', openpifpaf.__version__)"
