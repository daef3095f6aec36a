"""Resuming a dense-task run moves the data stream by sampler indices (tasks/dense/resume.py): the
same images per iteration as the uninterrupted run, and none of the trained batches loaded again."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.dataset import BaseDataset, DefaultSampler, InfiniteSampler
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from tasks.dense.resume import ResumableBatchSampler, skip_trained_batches_on_resume
from tasks.segmentation.ade_data import make_ade20k_dataset
from tasks.segmentation.run import CONFIGS, run_segmentation, seg_run

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py
TINY = "random_vit_test_patch8"


def stream(batch_sampler, n):
    it = iter(batch_sampler)
    return [next(it) for _ in range(n)]


def test_seek_gives_the_stream_from_batch_k_whatever_was_drawn_before():
    data = list(range(10))
    ref = stream(ResumableBatchSampler(InfiniteSampler(data, shuffle=True, seed=3), 3), 30)
    assert len({tuple(b) for b in ref}) > 5 and all(len(b) == 3 for b in ref)  # shuffled, endless
    for drawn in (0, 4):  # 4: what a DataLoader with 2 workers prefetches when the loop is built
        for k in (0, 2, 4, 11):
            bs = ResumableBatchSampler(InfiniteSampler(data, shuffle=True, seed=3), 3)
            stream(bs, drawn)
            bs.seek(k)
            assert stream(bs, 8) == ref[k : k + 8], (drawn, k)
            assert stream(bs, 2) == ref[k + 8 : k + 10]  # a later pass continues the stream
    bs = ResumableBatchSampler(InfiniteSampler(data, shuffle=True, seed=3), 3)
    stream(bs, 300)
    with pytest.raises(RuntimeError, match="cannot go back to batch 0: drawn 300, only the last 256"):
        bs.seek(0)
    with pytest.raises(RuntimeError, match="needs an endless sampler"):
        stream(ResumableBatchSampler(DefaultSampler(data, shuffle=False), 3), 5)


def test_only_endless_training_samplers_are_wrapped_once():
    cfg = dict(
        train_dataloader=dict(
            batch_size=2,
            sampler=dict(type="InfiniteSampler", shuffle=True),
            batch_sampler=dict(type="AspectRatioBatchSampler"),
        )
    )
    assert skip_trained_batches_on_resume(cfg) and skip_trained_batches_on_resume(cfg)
    assert cfg["train_dataloader"]["batch_sampler"] == dict(
        type="ResumableBatchSampler", batch_sampler=dict(type="AspectRatioBatchSampler")
    )
    assert cfg["custom_hooks"] == [dict(type="SkipTrainedBatches")]
    finite = dict(train_dataloader=dict(batch_size=2, sampler=dict(type="DefaultSampler", shuffle=True)))
    assert not skip_trained_batches_on_resume(finite) and "custom_hooks" not in finite


SEEN: dict[str, dict[int, list[str]]] = {}


@HOOKS.register_module(force=True)
class RecordImages(Hook):
    """Test hook: the image files of every training iteration, by run tag."""

    def __init__(self, tag):
        self.tag = tag

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        SEEN.setdefault(self.tag, {})[runner.iter + 1] = [Path(s.img_path).name for s in data_batch["data_samples"]]


class Preempted(Exception):
    pass


@HOOKS.register_module(force=True)
class PreemptAfter(Hook):
    priority = "LOWEST"  # after CheckpointHook

    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at:
            raise Preempted


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_run_trains_on_the_same_images_without_loading_the_trained_ones(tmp_path, monkeypatch, workers):
    make_ade20k_dataset(tmp_path / "ade", n_train=6, n_val=2, image_size=(64, 64), seed=0)
    root = tmp_path / "ade" / "ADEChallengeData2016"
    loads = []
    prepare = BaseDataset.prepare_data
    monkeypatch.setattr(
        BaseDataset,
        "prepare_data",
        lambda self, idx: (
            (loads.append(idx) if "training" in self.data_prefix["img_path"] else None) or prepare(self, idx)
        ),
    )

    def config(tag, extra=""):
        path = tmp_path / f"{tag}.py"
        path.write_text(
            f"_base_ = [{str(CONFIGS['smoke'])!r}]\n"
            f"train_dataloader = dict(num_workers={workers}, persistent_workers={workers > 0})\n"
            "default_hooks = dict(checkpoint=dict(interval=3))\n"
            f"custom_hooks = [dict(type='RecordImages', tag={tag!r}){extra}]\n"
        )
        return path

    run = dict(crop_size=64, iters=6, trust_config=True)
    run_segmentation(seg_run(TINY, None, root, config=config("whole"), work_dir=tmp_path / "whole", **run))
    with pytest.raises(Preempted):
        run_segmentation(
            seg_run(
                TINY,
                None,
                root,
                config=config("first", ", dict(type='PreemptAfter', at=3)"),
                work_dir=tmp_path / "resumed",
                **run,
            )
        )
    loads.clear()
    row = run_segmentation(seg_run(TINY, None, root, config=config("rest"), work_dir=tmp_path / "resumed", **run))
    assert row["extra"]["start_iter"] == 3

    whole, first, rest = SEEN.pop("whole"), SEEN.pop("first"), SEEN.pop("rest")
    assert sorted(whole) == [1, 2, 3, 4, 5, 6] and sorted(first) == [1, 2, 3] and sorted(rest) == [4, 5, 6]
    assert {i: whole[i] for i in (1, 2, 3)} == first
    assert {i: whole[i] for i in (4, 5, 6)} == rest  # the images of iterations 4-6, as if never stopped
    if workers == 0:  # (workers load in their own processes; there the record replay above is what is tested)
        # the resumed run loaded its 3 batches of 4, not the 3 trained ones first (mmengine's resume: 24)
        assert len(loads) == 12
