"""The task registry: every task declared once (tasks/<family>/task.py), read by the suites, the
runner, the CLI and the tables; generators write what readers read; cheap to import."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.core.errors import BenchError
from bench.suite import load_suite
from tasks.classification.datasets import DATASETS
from tasks.registry import COMMANDS, TABLES, TASKS, get_task, runnable_tasks
from tasks.spec import resolve

ROOT = Path(__file__).resolve().parent.parent
SMALL = {
    "coco": {"n_train": 2, "n_val": 1, "image_size": [64, 64]},
    "ade20k": {"n_train": 2, "n_val": 1, "image_size": [32, 32]},
}
SMALL_CLS = {"n_train_per_class": 2, "n_val_per_class": 1, "num_classes": 2, "image_size": 16}


def test_catalogue():
    assert list(TASKS) == ["coco", "ade20k", "imagenet", *DATASETS]
    assert runnable_tasks() == ("coco", "ade20k", *DATASETS)  # ImageNet: published numbers only
    assert TASKS["coco"].protocols == ("maskrcnn_fpn", "maskrcnn_vitdet")
    assert (TASKS["coco"].img_size, TASKS["ade20k"].img_size, TASKS["inat2018"].img_size) == (1024, 512, 224)
    assert [c.name for c in COMMANDS] == ["det", "seg", "cls"]
    names = [t.name for t in TABLES]
    assert len(names) == len(set(names))  # one Table object per file name
    assert set(names) == {
        "table3_imagenet",
        "table4_coco",
        "table5_ade20k",
        "table6_transfer_cls",
        "linear_probe",
        "partial_finetune",
    }
    for spec in TASKS.values():
        assert spec.tables and set(spec.tables) <= set(spec.protocols)


def test_get_task_names_the_allowed_tasks():
    assert get_task("ade20k") is TASKS["ade20k"]
    with pytest.raises(BenchError) as e:
        get_task("lvis")
    assert str(e.value) == (
        "unknown task 'lvis'; allowed: coco, ade20k, imagenet, inat2017, inat2018, "
        "inat2019, places205, places365, folder, digits"
    )


def test_declarations_match_the_code_they_name():
    from tasks.classification.protocols import PROTOCOLS
    from tasks.detection.run import PROTOCOL_OF_VARIANT
    from tasks.detection.task import VARIANTS

    assert VARIANTS == {p: v for v, p in PROTOCOL_OF_VARIANT.items()}
    for spec in TASKS.values():
        if spec.family == "classification":
            assert spec.protocols == PROTOCOLS
        if spec.command:
            assert callable(resolve(spec.command.add_arguments)) and callable(resolve(spec.command.main))
        if spec.runnable:
            assert spec.generator_options()  # resolves; suites may set its options


@pytest.mark.parametrize("name", runnable_tasks())
def test_generator_writes_what_the_reader_reads(tmp_path, name):
    spec = TASKS[name]
    root = spec.generate(tmp_path / "d", **SMALL.get(name, SMALL_CLS))
    data = spec.reader(root)
    if spec.family == "classification":
        train, val = data
        assert (len(train), len(val), train.num_classes) == (4, 2, 2)
    elif name == "coco":
        assert (data["num_train"], data["num_val"]) == (2, 1)
    else:
        assert (data["training"].num_images, data["validation"].num_images) == (2, 1)


def test_suites_accept_each_tasks_own_keys_only(tmp_path):
    doc = {
        "name": "t",
        "arch": "vit_test_patch8",
        "seeds": [0],
        "inits": {"random": {}},
        "tasks": {name: {"generate": {}} for name in runnable_tasks()},
    }
    doc["tasks"]["coco"]["iters"] = 5
    doc["tasks"]["folder"].update(epochs=1, batch_size=4, bf16=True)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc))
    suite = load_suite(path)
    assert {t.task: t.protocol for t in suite.tasks} == {n: TASKS[n].protocols[0] for n in runnable_tasks()}
    assert all(t.spec is TASKS[t.task] for t in suite.tasks)
    doc["tasks"] = {"ade20k": {"generate": {}, "epochs": 1}}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(
        BenchError,
        match=r"unknown key 'tasks.ade20k.epochs'; allowed: task, protocol, data, "
        r"generate, config, trust_config, search, select_on, unequal_grid_reason, amp, bf16, floors, iters$",
    ):
        load_suite(path)


def test_registry_and_help_do_not_import_mm_libraries():
    # The light set-up of `make demo` has none of the dense libraries: the registry, the suite
    # loader and `bench --help` must not need them (torch they may: first-party imports sit at the top).
    code = (
        "import sys, tasks.registry, bench.cli; bench.cli.build_parser(['--help']); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('mmdet', 'mmseg', 'mmcv', 'mmengine', 'detectron2', 'matplotlib')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_suite_picks_the_detection_engine_per_task(tmp_path, monkeypatch):
    import bench.runner as runner
    import tasks.detection.task as det_task

    doc = {
        "name": "t",
        "arch": "vit_test_patch8",
        "seeds": [0],
        "inits": {"random": {}},
        "tasks": {
            "d2": {"task": "coco", "engine": "detectron2", "generate": {"n_train": 2, "n_val": 1}},
            "mm": {"task": "coco", "generate": {"n_train": 2, "n_val": 1}},
        },
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc))
    suite = load_suite(path)
    assert [t.engine for t in suite.tasks] == ["detectron2", None]
    seen = []
    # the family picks the engine's run by name: record which one each cell's TransferRun reaches
    monkeypatch.setattr(det_task, "engine_run", lambda engine: lambda run: seen.append(engine) or {})
    for cell in runner.plan(suite):
        runner.run_transfer_cell(suite, cell, tmp_path / "out", None)
    assert seen == ["detectron2", "mmdet"]  # the declaration's first engine is the default

    doc["tasks"]["d2"]["engine"] = "caffe"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(BenchError, match=r"key tasks.d2.engine is 'caffe'; allowed: mmdet, detectron2$"):
        load_suite(path)
    doc["tasks"] = {"ade20k": {"generate": {}, "engine": "detectron2"}}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(BenchError, match=r"unknown key 'tasks.ade20k.engine'"):
        load_suite(path)
