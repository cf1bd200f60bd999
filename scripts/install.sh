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
# package dataset-fashion-mnist (or $FMNIST_DIR), the text benchmark's fortunes the packages fortunes,
# fortunes-de/-es/-it (or $FORTUNES_DIR): installed here when apt-get can run.
set -euo pipefail

SRC="$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)"
EDITABLE="${2:-}"
VENV="${VENV:-$SRC/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${EXTRAS:-test,bench}"
TORCH_PIN="torch==2.13.0"
FMNIST_DEFAULT=/usr/share/datasets/fashion-mnist

# apt-get install PACKAGE... WHAT: only when root with apt-get; a warning names what is missing otherwise
apt_install() {
    local what="$1"; shift
    if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
        echo "== apt-get install $*"
        if ! { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }; then
            echo "warning: apt-get could not install $*: $what" >&2
        fi
    else
        echo "warning: not installed: $* (sudo apt-get install $*): $what" >&2
    fi
}

# The text benchmark's fortunes (its other text, apt's package lists, is already there).
if [[ -z "${FORTUNES_DIR:-}" && ! -d /usr/share/games/fortunes/es ]]; then
    apt_install "the text benchmark (fusion_bench_fw.offline.textbench) and its test need them (or FORTUNES_DIR)" \
        fortunes fortunes-de fortunes-es fortunes-it
fi

if [[ -z "${FMNIST_DIR:-}" && ! -d "$FMNIST_DEFAULT" ]]; then
    apt_install "the mini benchmark (and its test) needs it, or FMNIST_DIR=<folder of the idx .gz files>" \
        dataset-fashion-mnist
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
