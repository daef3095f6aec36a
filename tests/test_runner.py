"""Suites and the runner: matrix expansion and ids, --only/--skip, validation messages, failed cells,
resuming a killed run, and the ci suite end to end."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.core.errors import BenchError
from bench.core.results import ResultsStore, default_run_id
from bench.runner import add_run_arguments, plan, run_main, run_suite
from bench.runner.state import cell_settings, changed_cells, check_inputs
from bench.suite import load_suite
from bench.tables.rows import finished_runs

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# A tiny classification task: 2 classes x 4 train / 2 val images of 32 px, linear probe, 1 epoch
# (without the raw-pixel floor cells a generated set gets by default: tests of them are their own).
TINY_LINEAR = {
    "floors": False,
    "task": "folder",
    "protocol": "linear",
    "config": "smoke",
    "epochs": 1,
    "batch_size": 8,
    "generate": {"n_train_per_class": 4, "n_val_per_class": 2, "num_classes": 2, "image_size": 32},
}


def write_suite(tmp_path: Path, doc: dict, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


MATRIX = {
    "name": "matrix",
    "arch": "vit_test_patch8",
    "seeds": [0, 1],
    "inits": {
        "random": {},
        "supervised": {"checkpoint": "ckpt/deit.pth"},
        "mae": {"pretrain": {"steps": 5, "mask_ratio": 0.6}},
    },
    "tasks": {
        "coco": {"protocol": "maskrcnn_vitdet", "generate": {"n_train": 4}},
        "ade20k": {"data": "/datasets/ade"},
        "fp": {"task": "inat2018", "protocol": "partial", "k": [0, 2], "generate": {"num_classes": 3}},
    },
}


# --------------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------------


def test_plan_expands_inits_tasks_k_seeds_with_store_run_ids(tmp_path):
    suite = load_suite(write_suite(tmp_path, MATRIX))
    cells = plan(suite)
    # 1 pretraining + 3 inits x (coco + ade20k + 2 values of k) x 2 seeds + the raw-pixel floors
    # of the classification set (generated: floors by default) x 2 seeds
    assert len(cells) == 1 + 3 * 4 * 2 + 2 == 27
    assert [c.name for c in cells[:3]] == ["mae/pretrain", "random/coco/seed0", "random/coco/seed1"]
    assert cells[0].kind == "pretrain" and all(c.kind == "transfer" for c in cells[1:-2])
    by_name = {c.name: c for c in cells}
    assert set(by_name) >= {"supervised/ade20k/seed1", "mae/fp/k0/seed0", "mae/fp/k2/seed1"}
    assert len({c.id for c in cells}) == 27
    assert [(c.name, c.kind) for c in cells[-2:]] == [
        ("raw-pixels/fp/seed0", "floor"),
        ("raw-pixels/fp/seed1", "floor"),
    ]

    # ids are the results store's default run ids (MAE's mask ratio takes part, as in its rows)
    c = by_name["mae/fp/k2/seed1"]
    assert c.id == default_run_id("matrix", "inat2018", "partial", 2, "mae", "vit_test_patch8", 1, {"mask_ratio": 0.6})
    assert c.needs == "mae/pretrain" and c.work_dir == Path("work/mae/fp/k2/seed1")
    c = by_name["supervised/coco/seed0"]
    assert c.id == default_run_id(
        "matrix", "coco", "maskrcnn_vitdet", None, "supervised", "vit_test_patch8", 0, {"engine": "mmdet"}
    )  # a task with several engines: the engine is part of the id
    assert c.needs is None and c.init.checkpoint == Path("ckpt/deit.pth")
    # the plan is stable: loading the file again gives the same names and ids
    again = plan(load_suite(tmp_path / "suite.yaml"))
    assert [(c.name, c.id) for c in again] == [(c.name, c.id) for c in cells]


def test_only_and_skip_select_cells_and_keep_needed_pretraining(tmp_path):
    suite = load_suite(write_suite(tmp_path, MATRIX))
    names = [c.name for c in plan(suite, only="*/coco/*")]
    assert names == [
        "mae/pretrain",
        "random/coco/seed0",
        "random/coco/seed1",
        "supervised/coco/seed0",
        "supervised/coco/seed1",
        "mae/coco/seed0",
        "mae/coco/seed1",
    ]
    names = [c.name for c in plan(suite, only=["random/*", "mae/ade20k/seed0"], skip="*/seed1")]
    assert names == [
        "mae/pretrain",
        "random/coco/seed0",
        "random/ade20k/seed0",
        "random/fp/k0/seed0",
        "random/fp/k2/seed0",
        "mae/ade20k/seed0",
    ]
    names = [c.name for c in plan(suite, skip="mae/*,supervised/*,*/fp/*")]
    assert names == ["random/coco/seed0", "random/coco/seed1", "random/ade20k/seed0", "random/ade20k/seed1"]
    assert [c.name for c in plan(suite, only="*/pretrain")] == ["mae/pretrain"]
    with pytest.raises(BenchError, match=r"option --skip: pattern 'mea/\*' matches no cell"):
        plan(suite, skip="mea/*")


def test_cli_dry_run_prints_plan_and_seeds_override(tmp_path, capsys):
    path = write_suite(tmp_path, MATRIX)
    parser = add_run_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            str(path),
            "--out",
            str(tmp_path / "out"),
            "--dry-run",
            "--only",
            "random/*",
            "--skip",
            "*/fp/*",
            "--seeds",
            "3",
        ]
    )
    with pytest.raises(BenchError, match=r"key 'tasks.ade20k.data': /datasets/ade not found"):
        run_main(args)  # inputs are checked even for a dry run, after the plan is printed
    captured = capsys.readouterr()
    assert "random/ade20k/seed3" in captured.out
    assert captured.err == ""  # one problem: the error line only
    MATRIX2 = {**MATRIX, "tasks": {"coco": MATRIX["tasks"]["coco"], "fp": MATRIX["tasks"]["fp"]}}
    args.suite = str(write_suite(tmp_path, MATRIX2, "suite2.yaml"))
    assert run_main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["cell", "kind", "backbone", "weights", "status", "id", "config", "schedule"]
    assert out[2].split()[:5] == ["random/coco/seed3", "transfer", "random_vit_test_patch8", "random", "todo"]
    assert out[2].split()[6:] == ["default", "config's", "coco", "iterations"]
    assert out[-1].startswith("1 cells, 1 to run")
    assert not (tmp_path / "out" / "runs.jsonl").exists()


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _with(path: str, value):
    """MATRIX with the (dotted) key ``path`` set to ``value`` (None deletes it)."""
    doc = json.loads(json.dumps(MATRIX))
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(
    "doc, message",
    [
        (_with("colour", 1), r"unknown key 'colour'; allowed: name, description, arch, seeds"),
        (
            _with("inits.moco", {}),
            r"key 'inits.moco': unknown initialisation 'moco'; allowed: "
            r"random, mae, supervised, mocov3, beit",
        ),
        (
            _with("inits.mae.pretrain.method", "simclr"),
            r"key 'inits.mae.pretrain.method': unknown pretraining method 'simclr'; allowed: mae, "
            r"mocov3, beit, supervised",
        ),
        (
            _with("inits.mae.pretrain.stepz", 3),
            r"unknown key 'inits.mae.pretrain.stepz'; allowed: "
            r"method, data, img_size, epoch_size, mask_ratio",
        ),
        (_with("inits.mae.pretrain.mask_ratio", 1.5), r"key inits.mae.pretrain.mask_ratio must be in"),
        (_with("inits.mae.pretrain.seed", -1), r"key inits.mae.pretrain.seed must be an integer >= 0"),
        (_with("inits.mae.pretrain", None), r"key 'inits.mae': initialisation 'mae' needs weights"),
        (
            _with("inits.random.checkpoint", "x.pth"),
            r"key 'inits.random': initialisation 'random' "
            r"takes no weights",
        ),
        (
            _with("inits.random.arch", "vit_tiny"),
            r"key 'inits.random.arch': unknown architecture "
            r"'vit_tiny'; allowed: .*vit_demo_patch8",
        ),
        (
            _with("tasks.imagenet", {"data": "x"}),
            r"key 'tasks.imagenet': unknown task 'imagenet'; "
            r"allowed: coco, ade20k, inat2017",
        ),
        (
            _with("tasks.coco.protocol", "upernet"),
            r"key 'tasks.coco.protocol': protocol 'upernet' "
            r"is not one of coco's; allowed: maskrcnn_fpn, "
            r"maskrcnn_vitdet",
        ),
        (
            _with("tasks.coco.epochs", 3),
            r"unknown key 'tasks.coco.epochs'; allowed: task, protocol, "
            r"data, generate, config, trust_config, search, select_on, unequal_grid_reason, amp, bf16, floors, iters",
        ),
        (
            _with("tasks.coco.generate.n_images", 3),
            r"unknown key 'tasks.coco.generate.n_images'; "
            r"allowed: n_train, n_val, image_size, seed",
        ),
        (_with("tasks.ade20k.generate", {}), r"key 'tasks.ade20k' needs exactly one of 'data'"),
        (
            _with("tasks.fp.k", [0, 3]),
            r"key 'tasks.fp.k' has 3 but init 'random' \(vit_test_patch8\) "
            r"has only 2 blocks; allowed: 0..2",
        ),
        (_with("tasks.fp.k", None), r"key 'tasks.fp.k' is required for protocol 'partial'"),
        (_with("seeds", [0, 0]), r"key 'seeds' lists a seed twice"),
        (
            _with("inits.mae.init", ["mae"]),
            r"key 'inits.mae.init': unknown initialisation \['mae'\]; "
            r"allowed: random, mae",
        ),
        (_with("inits.random.arch", {"a": 1}), r"key 'inits.random.arch': unknown architecture"),
        (_with("inits.a\nb", {}), r"key 'inits.a\\nb': labels may hold only letters, digits"),
        (
            _with("tasks.coco.generate.image_size", 64),
            r"key tasks.coco.generate.image_size must be "
            r"a list of integers, got 64",
        ),
        (
            _with("tasks.fp.generate.num_classes", "3"),
            r"key tasks.fp.generate.num_classes must be an "
            r"integer, got '3'",
        ),
        (_with("name", None), r"key 'name' is required"),
    ],
)
def test_suite_errors_name_file_key_and_allowed_values(tmp_path, doc, message):
    path = write_suite(tmp_path, doc)
    with pytest.raises(BenchError, match=message) as info:
        load_suite(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_suite_file_errors(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\nseeds: [0]\nname: b\n")
    with pytest.raises(
        BenchError,
        match=r"dup.yaml: not valid YAML at line 3: key 'name' is "
        r"given twice",
    ):
        load_suite(path)
    path.write_text("? [a, b]\n: 1\n")
    with pytest.raises(
        BenchError,
        match=r"dup.yaml: not valid YAML at line 1: a mapping key must "
        r"be a plain value, not a list or mapping",
    ):
        load_suite(path)
    path.write_text("[" * 5000)
    with pytest.raises(BenchError, match=r"dup.yaml: not valid YAML: nested too deeply"):
        load_suite(path)
    with pytest.raises(
        BenchError,
        match=r"suite 'nope': no such file and not a bundled suite "
        r"\(bundled: ci, demo, .*paper",
    ):
        load_suite("nope")
    doc = {
        **MATRIX,
        "inits": {"mae": MATRIX["inits"]["mae"], "mae_again": {"init": "mae", "pretrain": {"mask_ratio": 0.6}}},
    }
    # two entries of one method are two labelled inits (issue #21): their own cells and run ids
    cells = {c.name: c for c in plan(load_suite(write_suite(tmp_path, doc)))}
    assert cells["mae/coco/seed0"].id != cells["mae_again/coco/seed0"].id
    assert cells["mae_again/coco/seed0"].id == default_run_id(
        "matrix",
        "coco",
        "maskrcnn_vitdet",
        None,
        "mae",
        "vit_test_patch8",
        0,
        {"mask_ratio": 0.6, "engine": "mmdet"},
        label="mae_again",
    )
    assert cells["mae_again/coco/seed0"].needs == "mae_again/pretrain"


def test_bundled_suites_load():
    names = sorted(p.stem for p in (REPO / "bench" / "suites").glob("*.yaml"))
    assert {"ci", "demo", "paper", "paper_twin", "search_ci", "dense_smoke", "yours_vs_official"} <= set(names)
    for name in names:  # every bundled suite, so a new one cannot be left out
        suite = load_suite(name)
        assert plan(suite)
    paper = load_suite("paper")
    assert {t.task for t in paper.tasks} == {
        "coco",
        "ade20k",
        "inat2017",
        "inat2018",
        "inat2019",
        "places205",
        "places365",
    }


# --------------------------------------------------------------------------------------------------
# Running: failures, resume
# --------------------------------------------------------------------------------------------------


def test_failed_cells_are_recorded_and_the_others_still_run(tmp_path, capsys):
    doc = {
        "name": "fail",
        "arch": "vit_test_patch8",
        "seeds": [0],
        "inits": {
            "random": {},
            # 8 crops per epoch < one batch of 16: the engine refuses at the start
            "mae": {"pretrain": {"steps": 2, "batch_size": 16, "epoch_size": 8}},
        },
        "tasks": {"good": TINY_LINEAR, "bad": {**TINY_LINEAR, "protocol": "finetune", "generate": {"num_classes": 11}}},
    }
    path = write_suite(tmp_path, doc)
    out = tmp_path / "out"
    args = add_run_arguments(argparse.ArgumentParser()).parse_args([str(path), "--out", str(out)])
    assert run_main(args) == 1  # some cells failed
    rows = {r["extra"]["cell"]: r for r in ResultsStore(out).rows()}
    assert sorted(rows) == ["mae/bad/seed0", "mae/good/seed0", "random/bad/seed0", "random/good/seed0"]
    assert rows["random/good/seed0"]["status"] == "ok"
    assert 0 <= rows["random/good/seed0"]["metrics"]["top1"] <= 100
    bad = rows["random/bad/seed0"]
    assert bad["status"] == "failed" and bad["metrics"] == {}
    assert bad["error"] == "BenchError: num_classes must be 1..10 (one per digit), got 11"
    for name in ("mae/good/seed0", "mae/bad/seed0"):
        assert rows[name]["status"] == "failed"
        assert rows[name]["error"].startswith(
            "RuntimeError: pretraining cell mae/pretrain failed: "
            "BenchError: dataset has 8 samples, fewer than one "
            "global batch of 16"
        )
    assert "Traceback" in (out / "work/random/bad/seed0/error.log").read_text()
    printed = capsys.readouterr().out
    assert "[2/5] mae/pretrain" not in printed and "[1/5] mae/pretrain: FAILED" in printed
    assert "suite fail: 1 cells ran, 0 were done, 4 failed" in printed
    # an overall progress line after every cell, failed ones too; no estimate once all are done
    progress = [line for line in printed.splitlines() if line.startswith("progress: ")]
    assert [line.split(",")[0] for line in progress] == [f"progress: {i}/5 cells" for i in range(1, 6)]
    assert "left" in progress[1] and "left" not in progress[-1]
    assert (out / "linear_probe.md").is_file()  # tables from the cell that finished

    # Editing the suite: a finished cell with other settings is kept (with a note); an unfinished
    # one would resume with other settings, so the run stops before doing anything.
    doc["tasks"]["good"] = {**TINY_LINEAR, "epochs": 2}
    doc["inits"]["mae"]["pretrain"]["steps"] = 3
    write_suite(tmp_path, doc)
    with pytest.raises(
        BenchError,
        match=r"cell mae/pretrain was started in .*/work/mae/pretrain "
        r"with other settings \(steps 2 -> 3\); pass --rerun-changed to set it aside",
    ):
        run_main(args)
    doc["inits"]["mae"]["pretrain"]["steps"] = 2
    write_suite(tmp_path, doc)
    args.dry_run = True
    assert run_main(args) == 0
    captured = capsys.readouterr()
    assert "note: random/good/seed0 is done with other settings (epochs 1.0 -> 2.0); kept" in captured.err
    assert "4 to run" in captured.out  # the done cell is not run again; the failed ones are
    assert len(ResultsStore(out).rows()) == 4

    # --rerun-changed: the changed cell's files move aside (nothing deleted), it runs again, and its
    # new row is the one the tables read
    args.rerun_changed = True
    assert run_main(args) == 0
    assert "1 cells with other settings would be set aside and run again: random/good/seed0" in capsys.readouterr().out
    assert len(ResultsStore(out).rows()) == 4  # a dry run moves and runs nothing
    args.dry_run = False
    assert run_main(args) == 1  # the bad cells still fail
    assert "random/good/seed0: other settings (epochs 1.0 -> 2.0); set aside in" in capsys.readouterr().out
    work = out / "work/random/good/seed0"
    (aside,) = work.glob("previous-*")
    assert json.loads((aside / "cell.json").read_text())["settings"]["epochs"] == 1.0
    assert json.loads((work / "cell.json").read_text())["settings"]["epochs"] == 2.0
    good = [r for r in ResultsStore(out).rows() if r["extra"]["cell"] == "random/good/seed0"]
    assert [(r["status"], r["extra"]["epochs"]) for r in good] == [("ok", 1.0), ("ok", 2.0)]
    read = finished_runs(ResultsStore(out).dataframe())
    assert list(read.loc[read["run_id"] == good[0]["run_id"], "extra.epochs"]) == [2.0]


def test_killed_run_resumes_and_finishes_with_one_ok_row_per_cell(tmp_path, capsys):
    doc = {
        "name": "kill",
        "arch": "vit_test_patch8",
        "seeds": [0],
        "inits": {"mae": {"pretrain": {"steps": 10, "batch_size": 8, "epoch_size": 32, "ckpt_every": 2}}},
        "tasks": {"lin": TINY_LINEAR},
    }
    path = write_suite(tmp_path, doc)
    out = tmp_path / "out"
    work = out / "work" / "mae" / "pretrain"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(
        [PYTHON, "-m", "bench.runner", str(path), "--out", str(out)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while not list(work.glob("checkpoint-*.pth")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no training checkpoint within 60 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (work / "pretrain.pth").exists()  # killed mid-pretraining
    assert ResultsStore(out).rows() == []

    summary = run_suite(load_suite(path), out)
    printed = capsys.readouterr().out
    assert "[1/2] mae/pretrain: resuming in" in printed
    resumed_at = int(printed.split("resumed at step ")[1].split()[0])
    assert 2 <= resumed_at < 10
    assert summary.ran == ["mae/pretrain", "mae/lin/seed0"] and not summary.failed
    steps = [json.loads(line)["step"] for line in (work / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))  # each step once: continued, not restarted or repeated
    rows = ResultsStore(out).rows()
    assert [(r["extra"]["cell"], r["status"]) for r in rows] == [("mae/lin/seed0", "ok")]
    assert rows[0]["run_id"] == plan(load_suite(path))[1].id


@pytest.mark.slow
def test_ci_suite_end_to_end_then_second_run_does_nothing(tmp_path, capsys):
    suite = load_suite("ci")
    out = tmp_path / "ci"
    cells = plan(suite)
    transfer = [c for c in cells if c.kind == "transfer"]
    summary = run_suite(suite, out)
    assert not summary.failed, summary.failed
    assert summary.ran == [c.name for c in cells]
    rows = ResultsStore(out).rows()
    floors = [row_id for c in cells if c.kind == "floor" for row_id in c.row_ids]  # two rows per floor cell
    assert floors and sorted(r["run_id"] for r in rows) == sorted([c.id for c in transfer] + floors)
    assert all(r["status"] == "ok" and r["suite"] == "ci" for r in rows)
    for r in rows:
        assert r["metrics"] and all(0.0 <= v <= 100.0 for v in r["metrics"].values())
    names = {p.name for p in summary.tables}
    for table in ("table4_coco", "table5_ade20k", "table6_transfer_cls", "linear_probe"):
        assert {f"{table}.md", f"{table}.csv", f"{table}.tex"} <= names
        assert (out / f"{table}.md").is_file()
    assert any(n.endswith(".png") for n in names)
    printed = capsys.readouterr().out
    # derived per row: every row is on generated data, none from the paper's checkpoints
    finished = len({r["run_id"] for r in rows})
    assert f"0 of {finished} rows comparable to the paper, {finished} marked:" in printed
    assert f"data in {finished} (generated data)" in printed
    assert "| random |" in printed and "| mae |" in printed

    again = run_suite(suite, out, tables=False)
    assert again.ran == [] and again.skipped == [c.name for c in cells]
    assert len(ResultsStore(out).rows()) == len(rows)


# --------------------------------------------------------------------------------------------------
# Slurm (submitit)
# --------------------------------------------------------------------------------------------------


def test_parse_slurm_spec():
    from bench.runner import parse_slurm

    assert parse_slurm("partition=gpu,nodes=2,gpus-per-node=8,time=4320") == {
        "slurm_partition": "gpu",
        "nodes": 2,
        "gpus_per_node": 8,
        "tasks_per_node": 8,
        "timeout_min": 4320,
    }
    assert parse_slurm("gpus-per-node=4,tasks-per-node=1") == {"gpus_per_node": 4, "tasks_per_node": 1}
    with pytest.raises(
        BenchError,
        match=r"option --slurm: 'gpus=8' is not KEY=VALUE with KEY "
        r"one of partition, nodes, gpus-per-node",
    ):
        parse_slurm("partition=gpu,gpus=8")
    with pytest.raises(BenchError, match=r"option --slurm: nodes must be an integer, got 'two'"):
        parse_slurm("nodes=two")


def test_slurm_option_without_slurm_is_a_one_line_error(tmp_path):
    args = add_run_arguments(argparse.ArgumentParser()).parse_args(
        [str(write_suite(tmp_path, MATRIX)), "--out", str(tmp_path / "out"), "--slurm", "partition=gpu"]
    )
    with pytest.raises(
        BenchError,
        match=r"^option --slurm: cannot submit Slurm jobs from this "
        r"machine \(.*\); use --local$",
    ):
        run_main(args)
    assert not (tmp_path / "out").exists()


def test_cells_run_as_submitit_jobs_and_requeue_as_the_same_cell(tmp_path, capsys):
    import submitit

    from bench.runner import CellJob

    path = write_suite(
        tmp_path,
        {
            "name": "jobs",
            "arch": "vit_test_patch8",
            "seeds": [0],
            "inits": {"random": {}},
            "tasks": {"lin": TINY_LINEAR},
        },
    )
    out = tmp_path / "out"
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")  # a local stand-in for Slurm
    executor.update_parameters(timeout_min=5)
    summary = run_suite(load_suite(path), out, executor=executor, tables=False)
    assert summary.ran == ["random/lin/seed0"] and not summary.failed
    assert "[1/1] random/lin/seed0: submitted as job" in capsys.readouterr().out
    rows = ResultsStore(out).rows()
    assert [(r["run_id"], r["status"]) for r in rows] == [(plan(load_suite(path))[0].id, "ok")]
    # preemption / timeout: submitit requeues what checkpoint() returns, i.e. the same cell,
    # which resumes from its work dir
    job = CellJob(path, (0,), out, "random/lin/seed0")
    again = job.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission) and again.function is job


# --------------------------------------------------------------------------------------------------
# Progress in logs (bench.progress)
# --------------------------------------------------------------------------------------------------


def test_progress_in_a_log_is_a_line_per_ten_percent_not_carriage_returns():
    import io

    from bench.progress import LineProgress, progress_bar

    log = io.StringIO()  # not a terminal
    ticks = iter(range(100))
    bar = progress_bar(total=200, initial=50, desc="mae", file=log)
    assert isinstance(bar, LineProgress)
    bar.clock = lambda: float(next(ticks))  # seconds since start: 0, 1, 2, ...
    bar.start = 0.0
    for step in range(150):
        bar.update(1)
        bar.set_postfix(loss=f"{1 - step / 150:.2f}")
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    # from 25 % done: a line at 30, 40, ..., 90 %, then the closing line at 100 %
    assert [line.split(" %")[0] for line in lines] == [f"mae: {p}" for p in (30, 40, 50, 60, 70, 80, 90, 100)]
    assert lines[0] == "mae: 30 % (60/200), 0 s, loss 0.95"  # the postfix set before that update
    assert lines[-1] == "mae: 100 % (200/200), 7 s, loss 0.01"
    off = progress_bar(total=10, enabled=False, file=log)
    off.update(5)
    off.close()
    assert log.getvalue().splitlines() == lines


def test_an_edited_config_file_is_other_settings_of_the_cells_that_read_it(tmp_path, capsys):
    """A cell's settings hold a digest of the config files it reads (the suite's own file, the
    family's protocol and named configs): editing one leaves a done cell kept with a note naming
    ``config_digest`` and refuses to resume an unfinished one; a cell.json written before the digest
    existed is not refused."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("epochs: 1\nbatch_size: 8\n", encoding="utf-8")
    doc = {"name": "cfg", "arch": "vit_test_patch8", "seeds": [0], "inits": {"random": {}}}
    doc["tasks"] = {"a": {**TINY_LINEAR, "config": str(mine)}, "b": {**TINY_LINEAR, "task": "digits", "generate": {}}}
    suite = load_suite(write_suite(tmp_path, doc))
    out = tmp_path / "out"
    cells = {c.name: c for c in plan(suite)}
    a, b = cells["random/a/seed0"], cells["random/b/seed0"]
    before = {name: cell_settings(c)["config_digest"] for name, c in cells.items()}
    for cell in (a, b):  # both started: a cell.json and a log in each work folder
        work = out / cell.work_dir
        work.mkdir(parents=True)
        (work / "cell.json").write_text(json.dumps({"name": cell.name, "id": cell.id, "settings": cell_settings(cell)}))
        (work / "log.jsonl").write_text("{}\n")
    assert check_inputs(suite, list(cells.values()), out, done_ids=set()) == []

    mine.write_text("epochs: 1\nbatch_size: 4\n", encoding="utf-8")  # only task a reads this file
    assert cell_settings(a)["config_digest"] != before[a.name]
    assert cell_settings(b)["config_digest"] == before[b.name]
    with pytest.raises(BenchError, match=r"cell random/a/seed0 was started in .* with other settings \(config_digest "):
        check_inputs(suite, [a, b], out, done_ids=set())
    assert check_inputs(suite, [a], out, done_ids={a.id}) == []  # done: kept, with a note
    assert "note: random/a/seed0 is done with other settings (config_digest " in capsys.readouterr().err

    assert set(changed_cells([a, b], out)) == {a.name}  # what --rerun-changed would set aside

    old = json.loads((out / b.work_dir / "cell.json").read_text())
    del old["settings"]["config_digest"]  # a record from before the digest: not refused, but
    (out / b.work_dir / "cell.json").write_text(json.dumps(old))  # --rerun-changed runs it again
    assert check_inputs(suite, [b], out, done_ids=set()) == []
    assert changed_cells([b], out) == {b.name: f"config_digest None -> {before[b.name]!r}"}
