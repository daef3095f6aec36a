"""``bench det --eval-only --weights FILE`` on both engines: the row of a tiny training run's own final
evaluation is reproduced exactly from its saved weights, marked ``extra['eval_only']``; the config each
engine saves in its work dir rebuilds the model through the library's own entry point (mmengine's
``Config.fromfile`` with ``custom_imports`` + ``Runner.test``, as mmdet's ``tools/test.py``; detectron2's
``LazyConfig.load`` + ``instantiate`` + ``inference_on_dataset``, as ``lazyconfig_train_net.py --eval-only``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bench.core.results import ResultsStore
from tasks.detection.coco_data import make_coco_dataset

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
REPO = Path(__file__).resolve().parents[1]
VENDORED = REPO.parent / "shared" / "vendor" / "detectron2-02b5c4e.tar.gz"
HAVE_D2 = importlib.util.find_spec("detectron2") is not None
TINY = "random_vit_test_patch8"


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco_dataset(tmp_path_factory.mktemp("det") / "coco", n_train=4, n_val=3, image_size=(64, 64), seed=0)


def bench(*argv) -> int:
    from bench.cli import main

    return main([str(a) for a in argv])


def train_then_evaluate(tmp_path, coco, engine: str, weights_name, iters: int):
    """A short smoke run, then --eval-only on its final weights; (trained row, evaluated row)."""
    common = ["det", "--engine", engine, "--backbone", TINY, "--data-root", coco, "--config", "smoke"]
    rows = tmp_path / "rows.jsonl"
    assert bench(*common, "--iters", iters, "--out", tmp_path / "train", "--results", rows) == 0
    weights = weights_name(tmp_path / "train")
    assert weights.is_file()
    assert (
        bench(
            *common,
            "--iters",
            iters,
            "--eval-only",
            "--weights",
            weights,
            "--out",
            tmp_path / "eval",
            "--results",
            rows,
        )
        == 0
    )
    trained, evaluated = ResultsStore(rows).rows()
    return trained, evaluated


def check_same_row(trained, evaluated, weights_dir):
    assert evaluated["metrics"] == trained["metrics"]  # exactly: the same weights, the same evaluation
    assert trained["metrics"]["APbox"] >= 0 and "APmask" in trained["metrics"]
    assert evaluated["extra"]["eval_only"] is True and "eval_only" not in trained["extra"]
    assert Path(evaluated["extra"]["weights"]).parent == Path(weights_dir).resolve()
    assert evaluated["run_id"] != trained["run_id"]  # eval_only joins the run id
    same = ("task", "protocol", "label", "backbone", "config_hash", "checkpoint_sha256", "deviations")
    assert {k: evaluated[k] for k in same} == {k: trained[k] for k in same}


def test_mmdet_eval_only_reproduces_the_training_runs_apbox_and_tools_test_rebuilds_the_model(tmp_path, coco):
    pytest.importorskip("mmdet")

    def newest(work):
        return max(work.glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))

    trained, evaluated = train_then_evaluate(tmp_path, coco, "mmdet", newest, 2)
    check_same_row(trained, evaluated, tmp_path / "train")
    assert evaluated["iterations"] == 2  # the iteration the weights were saved at
    # mmdet's tools/test.py path in a fresh process: Config.fromfile (custom_imports registers our
    # modules), Runner.from_cfg with load_from, runner.test()
    [saved] = [p for p in (tmp_path / "train").glob("*.py")]
    code = (
        "import sys; from mmengine.config import Config; from mmengine.runner import Runner\n"
        "cfg = Config.fromfile(sys.argv[1]); assert 'tasks.dense.mm_backbone' in cfg.custom_imports['imports']\n"
        "cfg.load_from, cfg.resume, cfg.work_dir = sys.argv[2], False, sys.argv[3]\n"
        "print('APbox', Runner.from_cfg(cfg).test()['bench/APbox'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, saved, newest(tmp_path / "train"), tmp_path / "tools_test"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"APbox {trained['metrics']['APbox']}" in out.stdout


@pytest.mark.skipif(not HAVE_D2, reason="detectron2 is not installed")
def test_detectron2_eval_only_reproduces_the_training_runs_apbox_and_its_saved_config_evaluates(tmp_path, coco):
    # 3 iterations: fvcore's step schedule needs one more than its 2 milestones
    trained, evaluated = train_then_evaluate(tmp_path, coco, "detectron2", lambda w: w / "model_final.pth", 3)
    check_same_row(trained, evaluated, tmp_path / "train")
    # detectron2's own path: LazyConfig.load + instantiate + the checkpoint + inference_on_dataset in a
    # fresh process (lazyconfig_train_net.py's do_test, run as the file itself when the source is here)
    saved, weights = tmp_path / "train" / "config.yaml", tmp_path / "train" / "model_final.pth"
    tool = None
    if VENDORED.is_file():
        with tarfile.open(VENDORED) as t:
            members = [m for m in t.getmembers() if m.name.endswith("tools/lazyconfig_train_net.py")]
            t.extractall(tmp_path / "src", members=members, filter="data")
        tool = next((tmp_path / "src").rglob("lazyconfig_train_net.py"), None)
    if tool is not None:
        script = [str(tool)]
        args = ["--config-file", saved, "--eval-only", f"train.init_checkpoint={weights}", "train.device=cpu"]
    else:  # the tool's eval-only path, line for line (tools/ is not part of the installed package)
        script = [
            "-c",
            "import sys; from detectron2.config import LazyConfig, instantiate\n"
            "from detectron2.checkpoint import DetectionCheckpointer\n"
            "from detectron2.engine import create_ddp_model\n"
            "from detectron2.evaluation import inference_on_dataset\n"
            "cfg = LazyConfig.apply_overrides(LazyConfig.load(sys.argv[1]), [f'train.init_checkpoint={sys.argv[2]}'])\n"
            "model = create_ddp_model(instantiate(cfg.model).to(cfg.train.device))\n"
            "DetectionCheckpointer(model).load(cfg.train.init_checkpoint)\n"
            "r = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))\n"
            "print('copypaste: Task: bbox'); print('copypaste: AP'); print('copypaste: %.4f' % r['bbox']['AP'])\n",
        ]
        args = [saved, weights]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1"
    )
    out = subprocess.run(
        [sys.executable, *script, *map(str, args)], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # print_csv_format's line for bbox: "copypaste: AP,AP50,..." then the numbers with 4 decimals
    lines = (out.stdout + out.stderr).splitlines()
    i = next(i for i, line in enumerate(lines) if "Task: bbox" in line)
    ap = float(lines[i + 2].split("copypaste:")[1].split(",")[0])
    assert ap == pytest.approx(trained["metrics"]["APbox"], abs=1e-4)
