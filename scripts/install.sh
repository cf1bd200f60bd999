#!/usr/bin/env bash
# Install fusion-bench-fw from nothing into a virtual environment (default ./.venv), CPU only.
#
#   bash scripts/install.sh                       # ./.venv with the test and bench extras
#   VENV=/tmp/v EXTRAS=test bash scripts/install.sh [SOURCE_DIR] [--editable]
#   bash scripts/install.sh --openclip            # ./.venv-openclip: also FusionBench's OpenCLIP pools
#
# Order matters: torch==2.13.0 (the CPU wheel) goes in first and is pinned again in the second
# call, so no dependency can swap it for a multi-GB CUDA build. torchvision, open_clip_torch and
# timm must stay out of that venv: the registry's torchvision is built against another torch and
# breaks `import lightning`, and with it the fusion_bench CLI.
#
# --openclip installs a torch / torchvision pair built for each other instead (chosen by `uname -m`:
# x86_64 torch 2.14.1 + torchvision 0.29.1, a CUDA build that runs on the CPU, about 5.5 GB;
# aarch64 torch 2.9.1 + torchvision 0.24.1, a CPU build), then open_clip_torch (the `openclip`
# extra) and everything else, and checks that torchvision, open_clip and the fusion_bench CLI's
# imports load together. README.md ("OpenCLIP pools") gives its time and size.
#
# The mini benchmark's Fashion-MNIST comes from the Debian package dataset-fashion-mnist (or $FMNIST_DIR),
# the text benchmark's fortunes the packages fortunes, fortunes-de/-es/-it (or $FORTUNES_DIR):
# installed here when apt-get can run.
set -euo pipefail

SRC_ARG="" EDITABLE="" OPENCLIP=""
for arg in "$@"; do
    case "$arg" in
        --editable) EDITABLE=1 ;;
        --openclip) OPENCLIP=1 ;;
        -*) echo "error: unknown option $arg (install.sh [SOURCE_DIR] [--editable] [--openclip])" >&2; exit 2 ;;
        *) SRC_ARG="$arg" ;;
    esac
done
SRC="$(cd "${SRC_ARG:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)"
PYTHON="${PYTHON:-python3}"
if [[ -z "$OPENCLIP" ]]; then
    VENV="${VENV:-$SRC/.venv}"
    EXTRAS="${EXTRAS:-test,bench}"
    TORCH_PINS=("torch==2.13.0")
else
    VENV="${VENV:-$SRC/.venv-openclip}"
    EXTRAS="${EXTRAS:-test,bench},openclip"
    case "$(uname -m)" in
        x86_64) TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1") ;;
        aarch64 | arm64) TORCH_PINS=("torch==2.9.1" "torchvision==0.24.1") ;;
        *) echo "error: --openclip knows a matching torch / torchvision pair for x86_64 and aarch64, not $(uname -m)" >&2; exit 2 ;;
    esac
fi
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
echo "== pip install ${TORCH_PINS[*]}"
"$VENV/bin/python" -m pip install -q "${TORCH_PINS[@]}"
echo "== pip install ${EDITABLE:+-e }$SRC[$EXTRAS] ${TORCH_PINS[*]}"
"$VENV/bin/python" -m pip install -q ${EDITABLE:+-e} "$SRC[$EXTRAS]" "${TORCH_PINS[@]}"
"$VENV/bin/python" -m pip check
if [[ -z "$OPENCLIP" ]]; then
    for forbidden in torchvision open_clip_torch open-clip-torch timm; do
        if "$VENV/bin/python" -m pip show -q "$forbidden" >/dev/null 2>&1; then
            echo "error: $forbidden got installed; it breaks the CPU-only set-up (uninstall it, or use --openclip)" >&2
            exit 1
        fi
    done
else
    # torchvision's compiled operators must load beside this torch, or lightning (and the CLI) fails
    "$VENV/bin/python" -c "import torch, torchvision, open_clip, lightning, fusion_bench.modelpool
torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
print('-- torch', torch.__version__, 'torchvision', torchvision.__version__, 'open_clip', open_clip.__version__)"
fi
echo "== installed into $VENV"
