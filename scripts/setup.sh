#!/usr/bin/env bash
# Idempotent set-up of .venv (re-running is a no-op when pyproject/constraints/this script are unchanged).
# Order matters: torch first; then the pure-Python dependencies; then mmcv 2.1.0 from source without
# build isolation (it compiles its C++ ops against the installed torch; ~30-50 min the first time on
# 2 cores, after which pip's wheel cache makes it seconds); then mmseg/mmdet and this project.
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
     submitit pyyaml ftfy regex pytest hypothesis
if ! $VENV/bin/python -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
    echo "[setup] mmcv 2.1.0 with compiled ops (first build on a machine: ~30-50 min on 2 cores) ..."
    # scripts/cxx20/c++ turns mmcv's hard-coded -std=c++17 into the -std=c++20 torch's headers need.
    MAX_JOBS=${MAX_JOBS:-$(nproc)} CXX=c++ PATH="$PWD/scripts/cxx20:$PWD/$VENV/bin:$PATH" \
        $PIP --no-build-isolation mmcv==2.1.0
fi
echo "[setup] mmsegmentation, mmdet, this project ..."
$PIP -e ".[test]"
$VENV/bin/python -c "import torch, torchvision, timm, mmcv.ops, mmseg, mmdet, pycocotools"
echo "$want" > $STAMP
echo "[setup] done: $($VENV/bin/python -c 'import torch,timm,mmcv;print("torch",torch.__version__,"timm",timm.__version__,"mmcv",mmcv.__version__)')"
