"""Parallel cells (issue #20, `bench run --jobs N`): independent cells run in forked processes, a
transfer cell after its pretraining; the rows are those of a one-at-a-time run; a run killed (its
whole process group, SIGKILL) while cells run side by side resumes to the same set of rows, each
cell's row once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.core.results import ResultsStore
from bench.runner import plan, run_suite
from bench.runner.jobs import needs_of
from bench.suite import load_suite

REPO = Path(__file__).resolve().parent.parent
TINY_LINEAR = {
    "task": "folder",
    "protocol": "linear",
    "config": "smoke",
    "epochs": 1,
    "batch_size": 8,
    "generate": {"n_train_per_class": 4, "n_val_per_class": 2, "num_classes": 2, "image_size": 32},
}
PRETRAIN = {"method": "mae", "steps": 30, "batch_size": 8, "epoch_size": 32, "ckpt_every": 2}
SUITE = {
    "name": "par",
    "arch": "vit_test_patch8",
    "seeds": [0, 1],
    "inits": {
        "random": {},
        "mae75": {"init": "mae", "pretrain": PRETRAIN},
        "mae50": {"init": "mae", "pretrain": {**PRETRAIN, "mask_ratio": 0.5}},
    },
    "tasks": {"lin": TINY_LINEAR},  # a generated set: its raw-pixel floor cells come too
}


def write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def results(out: Path) -> dict:
    """run id -> (label, seed, status, metrics) of every row in the store (duplicates would collide)."""
    rows = ResultsStore(out).rows()
    table = {r["run_id"]: (r["label"], r["seed"], r["status"], r["metrics"]) for r in rows}
    assert len(table) == len(rows), "a cell's row was written twice"
    return table


def row_ids(cells) -> set:
    return {i for c in cells if c.kind != "pretrain" for i in (c.row_ids or (c.id,))}


def test_dependencies_are_the_pretraining_and_the_candidates(tmp_path):
    doc = {**SUITE, "tasks": {"lin": {**TINY_LINEAR, "search": {"lr": [0.1, 1.0]}}}}
    cells = {c.name: c for c in plan(load_suite(write(tmp_path / "s.yaml", doc)))}
    assert needs_of(cells["mae75/lin/search/seed0/lr=0.1"]) == ("mae75/pretrain",)
    assert needs_of(cells["mae75/lin/seed0"]) == (
        "mae75/pretrain",
        "mae75/lin/search/seed0/lr=0.1",
        "mae75/lin/search/seed0/lr=1.0",
    )
    assert needs_of(cells["random/lin/seed1"]) == ("random/lin/search/seed1/lr=0.1", "random/lin/search/seed1/lr=1.0")
    assert needs_of(cells["raw-pixels/lin/seed0"]) == ()


@pytest.mark.slow
def test_two_jobs_give_the_rows_of_one_job(tmp_path, capsys):
    suite = load_suite(write(tmp_path / "s.yaml", SUITE))
    one = run_suite(suite, tmp_path / "one", jobs=1, tables=False)
    capsys.readouterr()
    two = run_suite(suite, tmp_path / "two", jobs=2, tables=False)
    printed = capsys.readouterr().out  # the two-job run's lines (a forked cell's own output is its own)
    assert not one.failed and not two.failed, (one.failed, two.failed)
    assert sorted(one.ran) == sorted(two.ran) == sorted(c.name for c in plan(suite))
    a, b = results(tmp_path / "one"), results(tmp_path / "two")
    assert set(a) == set(b) == row_ids(plan(suite))
    for run_id in a:  # the same computation in a forked process with one thread: the same numbers
        assert a[run_id][:3] == b[run_id][:3]
        assert a[run_id][3] == pytest.approx(b[run_id][3], abs=1e-6)
    # the pretrainings ran side by side: the second started before the first finished
    lines = [line for line in printed.splitlines() if line.startswith("[")]
    starts = [i for i, line in enumerate(lines) if "/pretrain: starting" in line]
    first_done = min(i for i, line in enumerate(lines) if "/pretrain: ok" in line)
    assert len(starts) == 2 and max(starts) < first_done
    # progress lines count every cell once
    progress = [line for line in printed.splitlines() if line.startswith("progress: ")]
    total = len(plan(suite))
    assert [p.split(",")[0] for p in progress] == [f"progress: {i}/{total} cells" for i in range(1, total + 1)]


@pytest.mark.slow
def test_killed_parallel_run_resumes_to_the_same_rows_without_duplicates(tmp_path):
    path = write(tmp_path / "s.yaml", SUITE)
    out = tmp_path / "out"
    work = out / "work"
    command = [sys.executable, "-m", "bench.runner", str(path), "--out", str(out), "--jobs", "2", "--no-tables"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def start():
        log = open(tmp_path / "run.log", "a")
        return subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def kill_when(ready, what: str):
        proc = start()
        deadline = time.monotonic() + 180
        while not ready() and proc.poll() is None:
            assert time.monotonic() < deadline, f"{what} not within 180 s: {(tmp_path / 'run.log').read_text()[-2000:]}"
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before {what}"
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and its cells at once
        proc.wait()

    # 1. both pretrainings mid-way, side by side
    kill_when(
        lambda: all(list((work / name / "pretrain").glob("checkpoint-*.pth")) for name in ("mae75", "mae50")),
        "two pretrainings with a checkpoint each",
    )
    assert not any((work / name / "pretrain" / "pretrain.pth").exists() for name in ("mae75", "mae50"))
    # 2. again, once some transfer rows are stored and others are not
    ids = row_ids(plan(load_suite(path)))
    kill_when(lambda: len(ResultsStore(out).rows()) > 0, "a first row")
    assert len(results(out)) < len(ids)

    summary = run_suite(load_suite(path), out, jobs=2, tables=False)
    assert not summary.failed, summary.failed
    final = results(out)
    assert set(final) == ids and all(status == "ok" for _, _, status, _ in final.values())
    for name in ("mae75", "mae50"):  # each pretraining step ran once: continued, never repeated
        steps = [json.loads(line)["step"] for line in (work / name / "pretrain" / "log.jsonl").read_text().splitlines()]
        assert steps == list(range(1, PRETRAIN["steps"] + 1))
    again = run_suite(load_suite(path), out, jobs=2, tables=False)
    assert again.ran == [] and results(out) == final


def test_jobs_option_is_bounded_by_the_cores(capsys):
    import argparse

    from bench.runner import add_run_arguments

    parser = add_run_arguments(argparse.ArgumentParser(prog="bench run"))
    cores = os.cpu_count() or 1
    assert parser.parse_args(["demo", "--jobs", str(cores)]).jobs == cores
    for bad in ("0", str(cores + 1), "two"):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(["demo", "--jobs", bad])
        assert e.value.code == 2
        assert f"expected an integer from 1 to {cores}" in capsys.readouterr().err
