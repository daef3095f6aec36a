"""scripts/setup.sh and the Makefile: builds use every core whatever OMP_NUM_THREADS says, `make demo`
waits only for the light set-up, the nvcc shim hands mmcv's CUDA ops C++20, and the set-up refuses a
CUDA machine whose mmcv was compiled without CUDA (scripts/check_mmcv_cuda.py, mocked here)."""

import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup.sh"


def _setup(*args, **env):
    """``bash scripts/setup.sh ARGS`` (only parts that return at once: ``jobs`` or a bad part)."""
    # an older script ignores its argument: it would start a whole set-up instead of answering
    assert 'jobs) echo "$jobs"; exit 0' in SETUP.read_text(), "scripts/setup.sh has no `jobs` part"
    return subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True, env=env, timeout=60)


def _env(**changes):
    env = {k: v for k, v in os.environ.items() if k not in ("MAX_JOBS", "OMP_THREAD_LIMIT")}
    env.update(changes)
    return env


@pytest.mark.parametrize("omp", ["1", "7", None])
def test_compile_jobs_ignore_omp_num_threads(omp):
    env = _env()
    env.pop("OMP_NUM_THREADS", None)
    if omp:
        env["OMP_NUM_THREADS"] = omp
    r = _setup("jobs", **env)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == len(os.sched_getaffinity(0))  # the cores this process may use
    # what the old `MAX_JOBS=$(nproc)` gave under the Makefile's OMP_NUM_THREADS=1
    old = subprocess.run(["nproc"], capture_output=True, text=True, env=_env(OMP_NUM_THREADS="1"))
    assert int(old.stdout) == 1


def test_max_jobs_overrides_and_bad_part_is_refused():
    r = _setup("jobs", **_env(MAX_JOBS="3"))
    assert r.stdout.strip() == "3"
    r = _setup("nope", **_env())
    assert r.returncode == 2 and "usage" in r.stderr


FAKE_PYTHON = """#!/bin/bash
# records what the set-up asks of its interpreter; imports succeed except mmcv's version check
if [[ $1 == -m && $2 == pip ]]; then
    echo "pip omp=${OMP_NUM_THREADS:-unset} jobs=${MAX_JOBS:-unset} cxx=${CXX:-unset} shim=$(command -v c++) ${*:4}" >> LOG
elif [[ $1 == scripts/check_mmcv_cuda.py ]]; then
    echo "check $2" >> LOG
    [[ $2 == plan ]] && echo cpu
elif [[ $1 == -c && $2 == *mmcv.__version__* ]]; then
    exit 1
fi
exit 0
"""


def test_setup_parts_run_in_order_and_builds_get_all_cores(tmp_path):
    """The whole script with a recording interpreter: the light part installs no dense library and
    no build; the full part builds mmcv and detectron2 with every core, the C++20 shim and no
    OMP_NUM_THREADS (the Makefile's 1), checks mmcv's CUDA ops; stamps make re-runs no-ops."""
    venv, log = tmp_path / "venv", tmp_path / "log"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(FAKE_PYTHON.replace("LOG", str(log)))
    (venv / "bin" / "python").chmod(0o755)
    env = _env(VENV=str(venv), OMP_NUM_THREADS="1")
    _setup("jobs", **env)  # refuses an older script before it could start a real set-up
    r = subprocess.run(["bash", str(SETUP), "light"], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    light = log.read_text().splitlines()
    assert len(light) == 3 and all(line.startswith("pip omp=1 jobs=unset cxx=unset") for line in light)
    assert not any(name in "".join(light) for name in ("mmcv", "mmseg", "mmdet", "detectron2", "build-isolation"))
    assert light[-1].endswith("--no-deps -e .")
    log.unlink()
    r = subprocess.run(["bash", str(SETUP), "light"], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and not log.exists()  # the light stamp: nothing to do
    r = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    full = log.read_text().splitlines()
    builds = [line for line in full if "--no-build-isolation" in line]
    jobs = len(os.sched_getaffinity(0))
    shim = str(ROOT / "scripts" / "cxx20" / "c++")
    assert [b.split(" ")[:5] for b in builds] == [["pip", "omp=unset", f"jobs={jobs}", "cxx=c++", f"shim={shim}"]] * 2
    assert "mmcv==2.1.0" in builds[0] and "detectron2" in builds[1]
    assert full[:1] == ["check plan"] and "check check" in full
    assert full.index("check check") > full.index(builds[0]) and full.index(builds[1]) > full.index("check check")
    log.unlink()
    r = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and not log.exists()  # the full stamp


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_waits_only_for_the_light_setup_and_keeps_omp_out_of_it(tmp_path):
    """Run the real Makefile in a scratch folder with a set-up script and interpreter that record
    their part and OMP_NUM_THREADS: the demo's set-up is the light part and sees no OMP_NUM_THREADS,
    the demo's commands run with one thread; `make test` runs the full set-up."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    log = tmp_path / "log"
    (tmp_path / "scripts" / "setup.sh").write_text(f'echo "setup $1 omp=${{OMP_NUM_THREADS:-unset}}" >> {log}\n')
    fake_py = tmp_path / "py"
    fake_py.write_text(f'#!/bin/sh\necho "python $2 $3 omp=${{OMP_NUM_THREADS:-unset}}" >> {log}\n')
    fake_py.chmod(0o755)
    env = _env()
    env.pop("OMP_NUM_THREADS", None)
    r = subprocess.run(["make", "-s", "demo", f"PY={fake_py}"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == [
        "setup light omp=unset",
        "python bench.cli run omp=1",
        "python bench.cli visualize omp=1",
    ]
    log.unlink()
    r = subprocess.run(["make", "-s", "test", f"PY={fake_py}"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == ["setup full omp=unset", "python pytest -q omp=1"]


def test_nvcc_shim_turns_mmcv_cxx17_into_cxx20(tmp_path):
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "nvcc"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    args = ["-DMMCV_WITH_CUDA", "-std=c++17", "-gencode=arch=compute_90,code=sm_90", "-c", "a b.cu"]
    r = subprocess.run(
        [str(ROOT / "scripts" / "cxx20" / "nvcc-c++20"), *args],
        capture_output=True,
        text=True,
        env=_env(CUDA_HOME=str(tmp_path)),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["-DMMCV_WITH_CUDA", "-std=c++20", *args[2:]]


# --------------------------------------------------------------------------------------------------
# scripts/check_mmcv_cuda.py


@pytest.fixture
def check_mod():
    spec = importlib.util.spec_from_file_location("check_mmcv_cuda", ROOT / "scripts" / "check_mmcv_cuda.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def fake_mmcv(monkeypatch):
    """Install a stand-in ``mmcv.ops`` whose get_compiling_cuda_version answers ``compiled[0]``."""
    compiled = ["not available"]
    ops = types.ModuleType("mmcv.ops")
    ops.get_compiling_cuda_version = lambda: compiled[0]
    mmcv = types.ModuleType("mmcv")
    mmcv.ops = ops
    monkeypatch.setitem(sys.modules, "mmcv", mmcv)
    monkeypatch.setitem(sys.modules, "mmcv.ops", ops)
    return compiled


@pytest.mark.parametrize(
    "gpu,compiled,refused",
    [(True, "not available", True), (True, "13.0", False), (False, "not available", False), (False, "13.0", False)],
)
def test_check_refuses_a_cuda_machine_with_a_cpu_only_mmcv(
    check_mod, fake_mmcv, monkeypatch, capsys, gpu, compiled, refused
):
    fake_mmcv[0] = compiled
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert check_mod.main(["check"]) == (1 if refused else 0)
    err = capsys.readouterr().err.strip().splitlines()
    if refused:
        assert len(err) == 1 and err[0].startswith("error: CUDA is visible but mmcv's ops were compiled without CUDA")
    else:
        assert err == []


def test_build_plan(check_mod, tmp_path):
    plan = check_mod.build_plan
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").write_text("")
    toolkit = str(tmp_path)
    assert plan(gpu=False, force=False, torch_cuda="13.0", cuda_home=toolkit, arch_list=None) == "cpu"
    assert plan(gpu=True, force=False, torch_cuda="13.0", cuda_home=toolkit, arch_list=None) == "cuda"
    assert plan(gpu=False, force=True, torch_cuda="13.0", cuda_home=toolkit, arch_list="9.0") == "cuda"
    assert "TORCH_CUDA_ARCH_LIST" in plan(gpu=False, force=True, torch_cuda="13.0", cuda_home=toolkit, arch_list=None)
    assert "no CUDA toolkit" in plan(gpu=True, force=False, torch_cuda="13.0", cuda_home=None, arch_list=None)
    assert "no CUDA toolkit" in plan(
        gpu=True, force=False, torch_cuda="13.0", cuda_home=str(tmp_path / "x"), arch_list=None
    )
    assert "torch wheel has no CUDA" in plan(gpu=False, force=True, torch_cuda=None, cuda_home=toolkit, arch_list="9.0")


def test_plan_on_this_machine_matches_torch(check_mod, monkeypatch, capsys):
    monkeypatch.delenv("FORCE_CUDA", raising=False)
    rc = check_mod.main(["plan"])
    out = capsys.readouterr().out.strip()
    if not torch.cuda.is_available():
        assert (rc, out) == (0, "cpu")
    else:
        assert out in ("cuda",) or out.startswith("error: a GPU is visible")


# --------------------------------------------------------------------------------------------------
# scripts/gpu_smoke.sh

SMOKE = ROOT / "scripts" / "gpu_smoke.sh"
SMOKE_STEPS = ["data", "pretrain", "finetune", "linear", "seg", "det-mmdet", "det-detectron2", "torchrun", "perf"]


def _smoke(*args, **env):
    return subprocess.run(
        ["bash", str(SMOKE), *args], capture_output=True, text=True, cwd=ROOT, env=_env(**env), timeout=900
    )


@pytest.mark.parametrize("cpu", [False, True])
def test_gpu_smoke_lists_every_step_in_order(cpu):
    r = _smoke("--dry-run", *(["--cpu"] if cpu else []), PY="py")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == SMOKE_STEPS
    cmd = dict(line.split(": ", 1) for line in lines)
    arch = "vit_test_patch8" if cpu else "vit_base_patch16"
    assert f"pretrain --method mae --arch {arch} " in cmd["pretrain"] and "--amp" in cmd["pretrain"]
    for protocol in ("finetune", "linear"):
        assert f"cls --protocol {protocol} --dataset digits" in cmd[protocol]
        assert "--checkpoint work_dirs/gpu_smoke/pretrain/pretrain.pth" in cmd[protocol]
    for engine in ("mmdet", "detectron2"):
        assert f"det --engine {engine} " in cmd[f"det-{engine}"] and "--amp" in cmd[f"det-{engine}"]
    assert "seg --backbone" in cmd["seg"] and "--amp" in cmd["seg"]
    assert (
        "torch.distributed.run --standalone --nproc_per_node 2 -m bench.cli pretrain --launcher pytorch"
        in cmd["torchrun"]
    )
    assert cmd["perf"].startswith("py -m bench.cli perf pretrain")


def test_gpu_smoke_runs_cheap_steps_on_cpu_and_reports_failures(tmp_path):
    r = _smoke("--cpu", "--only", "pretrain,perf", "--out", str(tmp_path / "ok"), PY=sys.executable)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["PASS pretrain", "PASS perf"], r.stdout
    assert "img/s (wall, with start-up)" in lines[0]
    assert "decoder 1 bf16: MAE " in lines[1]
    assert (tmp_path / "ok" / "pretrain" / "pretrain.pth").is_file()
    # a failing command: FAIL with its last line and log, exit status 1, the other steps still run
    r = _smoke("--cpu", "--only", "perf,finetune", "--out", str(tmp_path / "bad"), PY="false")
    assert r.returncode == 1
    assert [line.split(" (")[0] for line in r.stdout.splitlines()] == ["FAIL finetune", "FAIL perf"]
    r = _smoke("--nope")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown option --nope")
    r = _smoke("--only", "pretrain,nope")
    assert r.returncode == 2 and r.stderr.startswith("error: --only nope: not a step (data pretrain ")
