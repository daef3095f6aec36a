"""``bench seg --eval-only --weights FILE``: a trained model evaluated without training gives the
training run's own final metrics exactly, in the same row marked ``eval_only``; mmseg's own
checkpoint format loads too; the config saved in the work dir rebuilds and tests the model through
mmseg's own path (``tools/test.py``: ``Config.fromfile`` + ``Runner.from_cfg(cfg).test()``); the
held-out selection trains on training minus a fixed part and evaluates on that part."""

from __future__ import annotations

import pytest
import torch

from bench.core.errors import CheckpointError
from bench.core.results import ResultsStore
from tasks.segmentation.config import heldout_indices
from tasks.segmentation.run import run_segmentation, seg_run

TINY = "random_vit_test_patch8"

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tasks.segmentation.ade_data import make_ade20k_dataset

    tmp = tmp_path_factory.mktemp("seg_eval")
    make_ade20k_dataset(tmp / "ade", n_train=6, n_val=3, image_size=(64, 64), seed=0)
    ade = tmp / "ade" / "ADEChallengeData2016"
    work = tmp / "train"
    row = run_segmentation(
        seg_run(TINY, None, ade, work_dir=work, iters=4, crop_size=64, ckpt_interval=2, results=tmp / "rows.jsonl")
    )
    return tmp, ade, work, row


def evaluate(ade, weights, work, **kw):
    return run_segmentation(
        seg_run(TINY, None, ade, work_dir=work, iters=4, crop_size=64, eval_only=True, weights=weights, **kw)
    )


def test_eval_only_reproduces_the_training_runs_final_metrics(trained):
    tmp, ade, work, row = trained
    again = evaluate(ade, work / "iter_4.pth", tmp / "eval", results=tmp / "rows.jsonl")
    assert again["metrics"] == row["metrics"] and row["metrics"]["aAcc"] > 0
    assert again["extra"]["eval_only"] is True and "eval_only" not in row["extra"]
    assert again["extra"]["weights"] == str((work / "iter_4.pth").resolve())
    assert again["iterations"] == 4 and again["config_hash"] == row["config_hash"]
    assert again["run_id"] != row["run_id"]  # an evaluation is not the training run
    assert [r["run_id"] for r in ResultsStore(tmp / "rows.jsonl").rows()] == [row["run_id"], again["run_id"]]
    assert not list((tmp / "eval").glob("iter_*.pth"))  # nothing trained, nothing saved

    # evaluated inside the training folder: its checkpoints and record are left as they are
    before = sorted(p.name for p in work.iterdir())
    assert evaluate(ade, work / "iter_2.pth", work)["iterations"] == 2
    assert sorted(p.name for p in work.iterdir() if p.name in before) == before
    assert not list(work.glob("previous-*"))


def test_eval_only_takes_mmsegs_own_checkpoint_format_and_refuses_another_model(trained):
    tmp, ade, work, row = trained
    ours = torch.load(work / "iter_4.pth", map_location="cpu", weights_only=False)
    mmseg_style = tmp / "mmseg_release.pth"  # what mmseg's model zoo ships: meta + state_dict only
    torch.save({"meta": {"iter": 4}, "state_dict": ours["state_dict"]}, mmseg_style)
    assert evaluate(ade, mmseg_style, tmp / "eval_mmseg")["metrics"] == row["metrics"]

    partial = tmp / "partial.pth"
    sd = dict(ours["state_dict"])
    sd.pop(next(k for k in sd if k.startswith("decode_head.")))
    torch.save({"meta": {"iter": 4}, "state_dict": sd}, partial)
    with pytest.raises(CheckpointError, match=r"partial.pth: cannot load as the trained model of this config") as e:
        evaluate(ade, partial, tmp / "eval_partial")
    assert "\n" not in str(e.value)


def test_the_saved_config_rebuilds_and_tests_the_model_with_mmsegs_own_runner(trained, tmp_path):
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    _, _, work, row = trained
    [saved] = work.glob("*.py")
    cfg = Config.fromfile(str(saved))  # custom_imports: RegistryViT, our hooks and metric get registered
    assert "tasks.dense.mm_runner" in cfg.custom_imports["imports"]
    # what mmseg's tools/test.py does with `test.py CONFIG CHECKPOINT --work-dir DIR`
    cfg.work_dir, cfg.load_from = str(tmp_path / "test"), str(work / "iter_4.pth")
    DefaultScope._instance_dict.clear()  # a fresh process: no scope set by the runs before
    metrics = Runner.from_cfg(cfg).test()
    assert round(float(metrics["mIoU"]), 2) == row["metrics"]["mIoU"]
    assert round(float(metrics["aAcc"]), 2) == row["metrics"]["aAcc"]


def test_heldout_selection_is_fixed_disjoint_and_evaluated_on(trained, tmp_path):
    _, ade, _, _ = trained
    rest, held = heldout_indices(6)
    assert (rest, held) == heldout_indices(6) and len(held) == 1 and sorted(rest + held) == list(range(6))
    assert len(heldout_indices(20210)[1]) == 2000  # the size of ADE20K's validation set
    row = run_segmentation(
        seg_run(TINY, None, ade, work_dir=tmp_path / "h", iters=2, crop_size=64, select="heldout", label="mae-x")
    )
    assert row["extra"]["select"] == "heldout" and row["label"] == "mae-x"
    assert "metrics on a held-out part of training (seed 20210), not validation" in row["deviations"]
    assert row["extra"]["per_example"]
    import numpy as np

    from tasks.segmentation.ade_data import ade20k_pairs

    ids = np.load(row["extra"]["per_example"])["ids"].tolist()
    names = [img.stem for img, _ in ade20k_pairs(ade, "training")]
    assert ids == [names[i] for i in held]  # the held-out training image, not validation's
