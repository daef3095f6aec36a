"""mmcv's CUDA ops at set-up time (scripts/setup.sh), in two steps:

    python scripts/check_mmcv_cuda.py plan    # prints 'cuda' or 'cpu': which mmcv ops to build
    python scripts/check_mmcv_cuda.py check   # exit 1 with one line if CUDA is visible but mmcv has no CUDA ops

mmcv 2.1.0 compiles its CUDA ops only when a GPU is visible at build time or FORCE_CUDA=1; a
CPU-only build imports fine and fails at the first NMS on a GPU tensor ("nms_impl: implementation
for device cuda:0 not found"). The set-up builds CUDA ops where a GPU is visible, or where asked
(FORCE_CUDA=1, e.g. building on a login node for GPU nodes), and refuses to finish otherwise.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def build_plan(gpu: bool, force: bool, torch_cuda: str | None, cuda_home: str | None, arch_list: str | None) -> str:
    """'cpu', 'cuda', or 'error: ...' (one line): which mmcv ops this machine should build."""
    if not (gpu or force):
        return "cpu"
    why = "a GPU is visible" if gpu else "FORCE_CUDA=1"
    if not torch_cuda:
        return f"error: {why} but this torch wheel has no CUDA; install a CUDA build of torch first"
    if not cuda_home or not (Path(cuda_home) / "bin" / "nvcc").exists():
        return (
            f"error: {why} but no CUDA toolkit (nvcc) for mmcv's CUDA ops: set CUDA_HOME to a CUDA "
            f"{torch_cuda} toolkit (or install one, e.g. the nvidia-cuda-nvcc package)"
        )
    if not gpu and not arch_list:
        return (
            "error: FORCE_CUDA=1 without a visible GPU: set TORCH_CUDA_ARCH_LIST to the GPUs' architecture (e.g. 9.0)"
        )
    return "cuda"


def cuda_ops_problem(cuda_available: bool, compiled: str) -> str | None:
    """One line when CUDA is visible but mmcv's ops were compiled without it, else None.
    ``compiled``: ``mmcv.ops.get_compiling_cuda_version()`` ('not available' for a CPU build)."""
    if cuda_available and compiled == "not available":
        return (
            "error: CUDA is visible but mmcv's ops were compiled without CUDA (get_compiling_cuda_version: "
            "'not available'); bench det on mmdet would fail at its first NMS. Rebuild: "
            "pip uninstall -y mmcv && make setup"
        )
    return None


def main(argv: list[str]) -> int:
    import torch

    if argv == ["plan"]:
        plan = build_plan(
            gpu=torch.cuda.is_available(),
            force=os.environ.get("FORCE_CUDA") == "1",
            torch_cuda=torch.version.cuda,
            cuda_home=os.environ.get("CUDA_HOME"),
            arch_list=os.environ.get("TORCH_CUDA_ARCH_LIST"),
        )
        print(plan)
        return 1 if plan.startswith("error") else 0
    if argv == ["check"]:
        from mmcv.ops import get_compiling_cuda_version

        problem = cuda_ops_problem(torch.cuda.is_available(), get_compiling_cuda_version())
        if problem:
            print(problem, file=sys.stderr)
            return 1
        return 0
    print("usage: check_mmcv_cuda.py plan|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
