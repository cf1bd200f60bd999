#!/usr/bin/env bash
# Install fusion-bench-fw from nothing into a virtual environment (default ./.venv), CPU only.
#
#   bash scripts/install.sh                       # ./.venv with the test and bench extras
#   VENV=/tmp/v EXTRAS=test bash scripts/install.sh [SOURCE_DIR] [--editable]
#
# Order matters: torch==2.13.0 (the CPU wheel) goes in first and is pinned again in the second
# call, so no dependency can swap it for a multi-GB CUDA build. torchvision, open_clip_torch and
# timm must stay out: the registry's torchvision is a CUDA build that breaks `import lightning`,
# and with it the fusion_bench CLI. The mini benchmark's Fashion-MNIST comes from the Debian
# package dataset-fashion-mnist (or $FMNIST_DIR): installed here when apt-get can run.
set -euo pipefail

SRC="$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)"
EDITABLE="${2:-}"
VENV="${VENV:-$SRC/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${EXTRAS:-test,bench}"
TORCH_PIN="torch==2.13.0"
FMNIST_DEFAULT=/usr/share/datasets/fashion-mnist

if [[ -z "${FMNIST_DIR:-}" && ! -d "$FMNIST_DEFAULT" ]]; then
    if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
        echo "== apt-get install dataset-fashion-mnist"
        if ! { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; }; then
            echo "warning: apt-get could not install dataset-fashion-mnist: the mini benchmark needs it" \
                 "(or FMNIST_DIR=<folder of the idx .gz files>); its test will be skipped" >&2
        fi
    else
        echo "warning: Fashion-MNIST not found: the mini benchmark (and its test) needs the Debian package" \
             "dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist) or FMNIST_DIR=<folder of the idx .gz files>" >&2
    fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "== venv: $VENV"
    "$PYTHON" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
echo "== pip install $TORCH_PIN"
"$VENV/bin/python" -m pip install -q "$TORCH_PIN"
echo "== pip install ${EDITABLE:+-e }$SRC[$EXTRAS] $TORCH_PIN"
"$VENV/bin/python" -m pip install -q ${EDITABLE:+-e} "$SRC[$EXTRAS]" "$TORCH_PIN"
"$VENV/bin/python" -m pip check
for forbidden in torchvision open_clip_torch open-clip-torch timm; do
    if "$VENV/bin/python" -m pip show -q "$forbidden" >/dev/null 2>&1; then
        echo "error: $forbidden got installed; it breaks the CPU-only set-up (uninstall it)" >&2
        exit 1
    fi
done
echo "== installed into $VENV"
