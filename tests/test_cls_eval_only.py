"""``bench cls --eval-only --weights FILE`` (issue 21 item 3) reproduces the training run's own final
evaluation exactly, and the convergence curve (``--eval-every``) leaves training unchanged."""

import argparse

import numpy as np
import pytest
import torch

from backbones.registry import build_backbone
from bench.core.errors import BenchError
from tasks.classification.cli import add_cls_arguments, transfer_run
from tasks.classification.curve import read_curve
from tasks.classification.generate import make_image_folder
from tasks.classification.run import run_classification

BB = "mae_vit_test_patch8"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalonly")
    root = make_image_folder(tmp / "digits", n_train_per_class=8, n_val_per_class=5, num_classes=4, image_size=32)
    torch.manual_seed(0)
    torch.save({"model": build_backbone("random_vit_test_patch8").state_dict()}, tmp / "pt.pth")
    return root, tmp / "pt.pth"


def cls(root, ckpt, protocol, out, *more):
    argv = ["--protocol", protocol, "--dataset", "folder", "--data-root", str(root), "--backbone", BB]
    argv += ["--checkpoint", str(ckpt), "--config", "smoke", "--epochs", "2", "--batch-size", "8", "--no-progress"]
    argv += ["--out", str(out)]
    args = add_cls_arguments(argparse.ArgumentParser()).parse_args(argv + list(more))
    return run_classification(transfer_run(args))


@pytest.mark.parametrize("protocol,more", [("finetune", []), ("linear", ["--cfg-options", "cache_features=true"])])
def test_eval_only_reproduces_the_final_evaluation(data, tmp_path, protocol, more):
    root, ckpt = data
    row = cls(root, ckpt, protocol, tmp_path / "train", *more)
    weights = sorted((tmp_path / "train").glob("checkpoint-*.pth"))[-1]
    ev = cls(root, ckpt, protocol, tmp_path / "eval", *more, "--eval-only", "--weights", str(weights))
    assert ev["metrics"] == row["metrics"]
    assert ev["extra"]["eval_only"] is True and "eval_only" not in row["extra"]
    assert ev["iterations"] == row["iterations"] == 2 * (32 // 8)
    assert ev["run_id"] != row["run_id"] and ev["checkpoint_sha256"] == row["checkpoint_sha256"]
    a, b = np.load(row["extra"]["per_example"]), np.load(ev["extra"]["per_example"])
    assert (a["correct"] == b["correct"]).all() and (a["ids"] == b["ids"]).all()
    assert not list((tmp_path / "eval").glob("checkpoint-*.pth"))  # nothing trained


def test_eval_only_refuses_weights_of_another_model(data, tmp_path):
    root, ckpt = data
    cls(root, ckpt, "finetune", tmp_path / "ft")
    weights = sorted((tmp_path / "ft").glob("checkpoint-*.pth"))[-1]
    for wrong in (weights, ckpt):  # a fine-tuned model for a linear probe; a pretrained encoder
        with pytest.raises(BenchError, match=rf"{wrong.name}: its keys are not this classifier's"):
            cls(
                root,
                ckpt,
                "linear",
                tmp_path / "e",
                "--cfg-options",
                "cache_features=true",
                "--eval-only",
                "--weights",
                str(wrong),
            )
    with pytest.raises(BenchError, match=r"--eval-only needs --weights"):
        cls(root, ckpt, "finetune", tmp_path / "e2", "--eval-only")


def test_curve_is_written_per_epoch_and_leaves_training_unchanged(data, tmp_path):
    root, ckpt = data
    plain = cls(root, ckpt, "finetune", tmp_path / "plain")
    curved = cls(root, ckpt, "finetune", tmp_path / "curve", "--eval-every", "1")
    assert curved["metrics"] == plain["metrics"] and curved["extra"]["final_loss"] == plain["extra"]["final_loss"]
    curve = read_curve(tmp_path / "curve")
    assert [(c["epoch"], c["step"]) for c in curve] == [(1.0, 4), (2.0, 8)]
    assert curve[-1]["eval_top1"] == curved["metrics"]["top1"]
    assert all(c["train_loss"] > 0 for c in curve)


def test_cached_probe_curve_scores_the_head_on_features_as_the_full_model_does(data, tmp_path):
    """With cached features the curve evaluates the head on the frozen val features, computed once;
    its last point equals the final evaluation of the whole model on the images."""
    root, ckpt = data
    more = ["--cfg-options", "cache_features=true"]
    plain = cls(root, ckpt, "linear", tmp_path / "plain", *more)
    curved = cls(root, ckpt, "linear", tmp_path / "curve", *more, "--eval-every", "1")
    assert curved["metrics"] == plain["metrics"] and curved["extra"]["final_loss"] == plain["extra"]["final_loss"]
    curve = read_curve(tmp_path / "curve")
    assert [c["epoch"] for c in curve] == [1.0, 2.0]
    assert (curve[-1]["eval_top1"], curve[-1]["eval_top5"]) == (curved["metrics"]["top1"], curved["metrics"]["top5"])
