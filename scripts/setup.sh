#!/usr/bin/env bash
# Idempotent set-up of the virtual environment, in two parts:
#   bash scripts/setup.sh light   what `make demo` needs: torch, the pure-Python dependencies, this package;
#   bash scripts/setup.sh         (full: `make setup`, `make test`) light + mmcv with compiled ops,
#                                 mmsegmentation, mmdet and detectron2 (the dense tasks).
#   bash scripts/setup.sh jobs    prints the parallel compile jobs the builds use, and exits.
# Each part is a no-op when its stamp matches pyproject.toml, constraints.txt and this script.
# Order matters: torch first; then the pure-Python dependencies; mmcv 2.1.0 from source without build
# isolation (it compiles its ops against the installed torch; pip's wheel cache makes a rebuild seconds);
# then mmseg/mmdet; then detectron2 at a pinned commit (on no package index: from ../shared/vendor/ when
# it is there, else from GitHub), compiled the same way.
# Environment: PYTHON (the interpreter for a new venv), VENV (default .venv), MAX_JOBS (compile jobs),
# FORCE_CUDA=1 + TORCH_CUDA_ARCH_LIST (build CUDA ops without a visible GPU), CUDA_HOME.
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${1:-full}
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
VPY=$VENV/bin/python

# Compile with every core this process may use. coreutils nproc honours OMP_NUM_THREADS, which the
# Makefile sets to 1 for the demo and the tests (and make passes on to this prerequisite): drop it here.
jobs=${MAX_JOBS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}
case $PART in
    jobs) echo "$jobs"; exit 0 ;;
    light|full) ;;
    *) echo "usage: scripts/setup.sh [light|full|jobs]" >&2; exit 2 ;;
esac

want=$(cat pyproject.toml constraints.txt scripts/setup.sh scripts/check_mmcv_cuda.py | sha256sum | cut -c1-16)
LIGHT_STAMP=$VENV/.setup-light-stamp
STAMP=$VENV/.setup-stamp  # the full set-up
stamp_ok() { [[ -f $1 && "$(cat "$1")" == "$want" ]]; }
if stamp_ok $STAMP || { [[ $PART == light ]] && stamp_ok $LIGHT_STAMP; }; then
    exit 0
fi

[[ -x $VPY ]] || "$PY" -m venv "$VENV"
VBIN=$(cd "$VENV/bin" && pwd)  # absolute, for PATH (VENV may be relative or not)
PIP="$VPY -m pip install -q -c constraints.txt"
if ! stamp_ok $LIGHT_STAMP; then
    echo "[setup] torch, torchvision ..."
    $PIP ninja torch torchvision setuptools wheel
    echo "[setup] pure-Python dependencies and this project ..."
    $PIP timm mmengine pycocotools pandas scikit-image scikit-learn matplotlib tqdm safetensors \
         submitit pyyaml ftfy regex pytest pytest-xdist hypothesis import-linter ruff
    # --no-deps: pyproject also lists the dense libraries, which only the full set-up builds
    $PIP --no-deps -e .
    $VPY -c "import torch, torchvision, timm, sklearn, skimage, matplotlib, bench.cli"
    echo "$want" > $LIGHT_STAMP
fi
if [[ $PART == light ]]; then
    echo "[setup] light set-up done (the dense tasks need the full one: make setup)"
    exit 0
fi

# The builds: all cores, no OMP_NUM_THREADS, the C++20 shims (torch's headers need C++20; mmcv and
# detectron2 pass -std=c++17: scripts/cxx20/c++ and, for nvcc, scripts/cxx20/nvcc-c++20).
if [[ -z ${CUDA_HOME:-} ]]; then
    if [[ -x /usr/local/cuda/bin/nvcc ]]; then
        CUDA_HOME=/usr/local/cuda
    elif command -v nvcc >/dev/null; then
        CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    fi
fi
export CUDA_HOME=${CUDA_HOME:-}
ops=$($VPY scripts/check_mmcv_cuda.py plan) || { echo "[setup] $ops" >&2; exit 1; }
build=(env -u OMP_NUM_THREADS MAX_JOBS="$jobs" CXX=c++ PATH="$PWD/scripts/cxx20:$VBIN:$PATH")
cache=()
if [[ $ops == cuda ]]; then
    # headers the torch wheel's CUDA libraries ship (cusparse.h, cublas_v2.h, ...) for a pip-installed toolkit
    cuda_includes=$($VPY -c "import glob, os, torch; print(':'.join(glob.glob(os.path.join(os.path.dirname(torch.__path__[0]), 'nvidia', '*', 'include'))))")
    build+=(FORCE_CUDA=1 PYTORCH_NVCC="$PWD/scripts/cxx20/nvcc-c++20" CPATH="$cuda_includes${CPATH:+:$CPATH}")
    cache=(--no-cache-dir)  # pip's cache may hold a CPU-only wheel of the same version
    echo "[setup] CUDA ops: CUDA_HOME=$CUDA_HOME, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-those of the visible GPUs}"
elif [[ -n $CUDA_HOME ]]; then
    echo "[setup] a CUDA toolkit but no GPU here: CPU ops only (FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 make setup builds CUDA ops)"
fi
mmcv_ok() {
    $VPY -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null || return 1
    [[ $ops == cpu ]] || $VPY -c "from mmcv.ops import get_compiling_cuda_version as v; assert v() != 'not available'" 2>/dev/null
}
if ! mmcv_ok; then
    echo "[setup] mmcv 2.1.0 with compiled $ops ops, $jobs compile jobs (first build on a machine: ~30-50 min on 2 cores for CPU ops) ..."
    "${build[@]}" $PIP "${cache[@]}" --force-reinstall --no-deps --no-build-isolation mmcv==2.1.0
fi
$PIP mmcv==2.1.0  # its pure-Python dependencies (mmcv itself is there now)
$VPY scripts/check_mmcv_cuda.py check
echo "[setup] mmsegmentation, mmdet ..."
$PIP mmsegmentation mmdet
$PIP -e ".[test]"
$VPY -c "import torch, torchvision, timm, mmcv.ops, mmseg, mmdet, pycocotools"
D2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833
D2_VENDORED=../shared/vendor/detectron2-${D2_COMMIT:0:7}.tar.gz
D2_STAMP=$VENV/.detectron2-commit
if [[ "$(cat $D2_STAMP 2>/dev/null)" != "$D2_COMMIT" ]] \
        || ! $VPY -c "import detectron2, detectron2._C" 2>/dev/null; then
    echo "[setup] detectron2 @ ${D2_COMMIT:0:7} with compiled ops, $jobs compile jobs ..."
    # its pure-Python dependencies, pinned, from the index; then detectron2 itself without build
    # isolation against the installed torch, with the C++20 shims.
    # shapely: fvcore's crop of polygon masks (ViTDet's LSJ FixedSizeCrop on COCO's polygons).
    $PIP fvcore iopath omegaconf hydra-core antlr4-python3-runtime yacs tabulate termcolor cloudpickle \
         tensorboard black shapely
    if [[ -f $D2_VENDORED ]]; then
        D2_SRC=$D2_VENDORED
    else
        D2_SRC="git+https://github.com/facebookresearch/detectron2.git@$D2_COMMIT"
    fi
    "${build[@]}" $PIP "${cache[@]}" --no-build-isolation "$D2_SRC"
    $VPY -c "import detectron2, detectron2._C"
    echo "$D2_COMMIT" > $D2_STAMP
fi
echo "$want" > $STAMP
echo "[setup] done: $($VPY -c 'import torch,timm,mmcv;import detectron2;print("torch",torch.__version__,"timm",timm.__version__,"mmcv",mmcv.__version__,"detectron2",detectron2.__version__)')"
