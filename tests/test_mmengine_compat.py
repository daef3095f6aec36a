"""Why tasks/dense/mmengine_compat.py exists: mmengine 0.10.7 resumes with a bare ``torch.load``
(``weights_only=True`` since torch 2.6), which refuses the mmengine objects in mmengine's own
checkpoints. ``enable_mmengine_checkpoints`` allowlists exactly those, and nothing that runs code."""

from __future__ import annotations

import argparse
import collections
import os
import pickle

import pytest
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint  # what Runner.resume reads files with

from tasks.dense.mmengine_compat import enable_mmengine_checkpoints


class ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, inputs, labels, mode="tensor"):
        out = self.linear(inputs).squeeze(1)
        if mode == "loss":
            return {"loss": ((out - labels) ** 2).mean()}
        return out


class ToyData(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"inputs": torch.randn(4, generator=g), "labels": torch.tensor(float(i % 2))}


def make_runner(work_dir, max_iters, resume=False):
    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=ToyData(),
            sampler=dict(type="InfiniteSampler", shuffle=True),
            batch_size=4,
            num_workers=0,
            collate_fn=dict(type="default_collate"),
        ),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type="AdamW", lr=1e-2)),
        param_scheduler=dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=max_iters),
        default_hooks=dict(
            checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=2),
            logger=dict(type="LoggerHook", interval=1),
        ),
        log_processor=dict(by_epoch=False),
        resume=resume,
        randomness=dict(seed=0),
    )


@pytest.fixture(scope="module")
def mmengine_checkpoint(tmp_path_factory):
    """A checkpoint written by mmengine's Runner itself (2 iterations)."""
    work = tmp_path_factory.mktemp("mmengine_ckpt")
    make_runner(work, 2).train()
    return work, work / "iter_2.pth"


@pytest.fixture
def torch_default_allowlist():
    """torch's own weights-only allowlist only, for the duration of a test (restored after)."""
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(saved)


def test_mmengine_checkpoints_fail_to_load_without_it(mmengine_checkpoint, torch_default_allowlist):
    _, path = mmengine_checkpoint
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    assert "mmengine.logging.history_buffer.HistoryBuffer" in unsafe
    assert "builtins.getattr" in unsafe  # HistoryBuffer's statistics functions, pickled as getattr(cls, name)
    assert any(g.startswith("numpy") for g in unsafe)
    with pytest.raises(pickle.UnpicklingError, match="HistoryBuffer"):
        _load_checkpoint(str(path), map_location="cpu")


def test_mmengine_checkpoints_load_and_resume_with_it(mmengine_checkpoint, torch_default_allowlist):
    work, path = mmengine_checkpoint
    enable_mmengine_checkpoints()
    enable_mmengine_checkpoints()  # idempotent
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
    ckpt = _load_checkpoint(str(path), map_location="cpu")
    assert ckpt["meta"]["iter"] == 2
    loss = ckpt["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(loss, HistoryBuffer) and len(loss.data[0]) == 2
    assert HistoryBuffer._statistics_methods["mean"] is HistoryBuffer.mean  # restored, not replaced

    runner = make_runner(work, 4, resume=True)  # mmengine's own auto-resume from work/last_checkpoint
    runner.train()
    assert runner.iter == 4
    assert (work / "iter_4.pth").is_file()


class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class GetattrOnOtherClass:
    def __reduce__(self):
        return getattr, (collections.OrderedDict, "fromkeys")


class GetattrOtherName:
    def __reduce__(self):
        return getattr, (HistoryBuffer, "__init__")


def test_code_running_pickles_are_still_refused(tmp_path, torch_default_allowlist):
    enable_mmengine_checkpoints()
    marker = tmp_path / "pwned"
    cases = {
        "shell": ({"state_dict": {}, "meta": RunsShell(marker)}, "system"),
        "namespace": ({"meta": argparse.Namespace(lr=0.1)}, "Namespace"),
        "getattr_other_class": ({"meta": GetattrOnOtherClass()}, "getattr"),
        "getattr_other_name": ({"meta": GetattrOtherName()}, "__init__"),
    }
    for name, (obj, message) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        with pytest.raises(pickle.UnpicklingError, match=message):
            _load_checkpoint(str(path), map_location="cpu")
    assert not marker.exists()
