import os
import warnings

import pytest
import torch

# Tests run on 2 cores next to nothing else in CI; keep torch from oversubscribing: the cores are
# shared by the xdist workers (`make test` runs one per core).
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module's tests: on 2 shared cores two spinning threads can
    make tiny training steps 10-100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    # pycocotools 2.0.11 + numpy 2.x: every mask decode warns about __array__(copy=...).
    warnings.filterwarnings("ignore", message=".*__array__ implementation doesn't accept a copy keyword.*")


def run_torchrun(script, *args, nproc: int = 2, timeout: float = 300):
    """``python -m torch.distributed.run --standalone --nproc_per_node N script args...`` with one
    torch thread per process and no launch variables inherited from this process; asserts it
    succeeded, showing the error lines of every rank. The 2-process test files are their own worker
    scripts (gloo on CPU)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        str(script),
        *map(str, args),
    ]
    p = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    errors = [line for line in (p.stdout + p.stderr).splitlines() if "Error" in line or "error:" in line]
    assert p.returncode == 0, "\n".join(errors[-20:]) + "\n" + p.stderr[-3000:]
    return p


def torchrun_worker_main(worker):
    """The ``__main__`` of a test file that ``run_torchrun`` launches: ``worker(*argv as paths)`` on
    this rank, then the end every ``bench`` command has under torchrun
    (``bench.core.distributed.exit_distributed``: ranks leave together, no interpreter finalization, in
    which a gloo thread can abort a finished rank)."""
    import sys
    from pathlib import Path

    from bench.core.distributed import exit_distributed

    worker(*map(Path, sys.argv[1:]))
    exit_distributed(0)
