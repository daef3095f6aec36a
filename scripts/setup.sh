#!/usr/bin/env bash
# Idempotent set-up of .venv (re-running is a no-op when pyproject/constraints/this script are unchanged).
# Order matters: torch first; then the pure-Python dependencies; then mmcv 2.1.0 from source without
# build isolation (it compiles its C++ ops against the installed torch; ~30-50 min the first time on
# 2 cores, after which pip's wheel cache makes it seconds); then mmseg/mmdet and this project; then
# detectron2 at a pinned commit (on no package index: from ../shared/vendor/ when it is there, else
# from GitHub), compiled the same way (~6 min the first time, seconds from the wheel cache).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.setup-stamp
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [[ -f $STAMP && "$(cat $STAMP)" == "$want" ]]; then
    exit 0
fi
[[ -x $VENV/bin/python ]] || "$PY" -m venv $VENV
PIP="$VENV/bin/python -m pip install -q -c constraints.txt"
echo "[setup] torch, torchvision ..."
$PIP ninja torch torchvision setuptools wheel
echo "[setup] pure-Python dependencies ..."
$PIP timm mmengine pycocotools pandas scikit-image scikit-learn matplotlib tqdm safetensors \
     submitit pyyaml ftfy regex pytest hypothesis import-linter ruff
if ! $VENV/bin/python -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
    echo "[setup] mmcv 2.1.0 with compiled ops (first build on a machine: ~30-50 min on 2 cores) ..."
    # scripts/cxx20/c++ turns mmcv's hard-coded -std=c++17 into the -std=c++20 torch's headers need.
    MAX_JOBS=${MAX_JOBS:-$(nproc)} CXX=c++ PATH="$PWD/scripts/cxx20:$PWD/$VENV/bin:$PATH" \
        $PIP --no-build-isolation mmcv==2.1.0
fi
echo "[setup] mmsegmentation, mmdet, this project ..."
$PIP -e ".[test]"
$VENV/bin/python -c "import torch, torchvision, timm, mmcv.ops, mmseg, mmdet, pycocotools"
D2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833
D2_VENDORED=../shared/vendor/detectron2-${D2_COMMIT:0:7}.tar.gz
D2_STAMP=$VENV/.detectron2-commit
if [[ "$(cat $D2_STAMP 2>/dev/null)" != "$D2_COMMIT" ]] \
        || ! $VENV/bin/python -c "import detectron2, detectron2._C" 2>/dev/null; then
    echo "[setup] detectron2 @ ${D2_COMMIT:0:7} with compiled ops (first build on a machine: ~6 min on 2 cores) ..."
    # its pure-Python dependencies, pinned, from the index; then detectron2 itself without build
    # isolation against the installed torch, with the C++20 shim (its setup.py passes -std=c++17).
    # shapely: fvcore's crop of polygon masks (ViTDet's LSJ FixedSizeCrop on COCO's polygons).
    $PIP fvcore iopath omegaconf hydra-core antlr4-python3-runtime yacs tabulate termcolor cloudpickle \
         tensorboard black shapely
    if [[ -f $D2_VENDORED ]]; then
        D2_SRC=$D2_VENDORED
    else
        D2_SRC="git+https://github.com/facebookresearch/detectron2.git@$D2_COMMIT"
    fi
    MAX_JOBS=${MAX_JOBS:-$(nproc)} CXX=c++ PATH="$PWD/scripts/cxx20:$PWD/$VENV/bin:$PATH" \
        $PIP --no-build-isolation "$D2_SRC"
    $VENV/bin/python -c "import detectron2, detectron2._C"
    echo "$D2_COMMIT" > $D2_STAMP
fi
echo "$want" > $STAMP
echo "[setup] done: $($VENV/bin/python -c 'import torch,timm,mmcv;import detectron2;print("torch",torch.__version__,"timm",timm.__version__,"mmcv",mmcv.__version__,"detectron2",detectron2.__version__)')"
