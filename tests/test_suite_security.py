"""Hostile suite files (issue #16 items 1-3): a config file that runs code, a YAML alias bomb,
a suite name that escapes results/, infinite schedules, huge lists; and issue #17: every missing
or empty input listed at once. Each ends in one line and exit status 2, with nothing run."""

import argparse
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.core.errors import BenchError
from bench.core.results import ResultsStore
from bench.runner import add_run_arguments, run_main
from bench.suite import MAX_QUOTE, MAX_YAML_VALUES, _quote, load_suite

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SMOKE_SEG = REPO / "tasks" / "segmentation" / "configs" / "smoke.py"

TINY_LINEAR = {
    "floors": False,  # no raw-pixel floor cells here (tests/test_labels.py and test_runner.py have them)
    "task": "folder",
    "protocol": "linear",
    "config": "smoke",
    "epochs": 1,
    "batch_size": 8,
    "generate": {"n_train_per_class": 4, "n_val_per_class": 2, "num_classes": 2, "image_size": 32},
}


def write(path: Path, doc) -> Path:
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def bench_run(*args, cwd, limit_bytes: int | None = None, timeout: float = 300):
    """``bench run ARGS`` in a fresh process (optionally under an address-space limit)."""

    def limit():
        if limit_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return subprocess.run(
        [PYTHON, "-m", "bench.runner", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
    )


# --------------------------------------------------------------------------------------------------
# 1. A config file from outside the package runs Python when read: refused without trust
# --------------------------------------------------------------------------------------------------


def test_untrusted_config_file_is_refused_before_it_runs_then_trusted_runs(tmp_path):
    marker = tmp_path / "marker"
    config = write(
        tmp_path / "evil.py",
        f"_base_ = [{str(SMOKE_SEG)!r}]\n__import__('pathlib').Path({str(marker)!r}).write_text('ran')\n",
    )
    doc = {
        "name": "trust",
        "arch": "vit_test_patch8",
        "seeds": [0],
        "inits": {"random": {}},
        "tasks": {
            "ade20k": {
                "config": str(config),
                "iters": 2,
                "generate": {"n_train": 2, "n_val": 1, "image_size": [32, 32]},
            }
        },
    }
    suite = write(tmp_path / "suite.yaml", doc)
    out = tmp_path / "out"
    for extra in ([], ["--dry-run"]):
        done = bench_run(suite, "--out", out, *extra, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last == (
            f"error: {suite}: key 'tasks.ade20k.config': {config} is outside the "
            "package and is run as Python when read; set "
            "'tasks.ade20k.trust_config: true' (or pass --trust-config) if you trust it"
        )
        assert not marker.exists()
    assert not (out / "runs.jsonl").exists() and not (out / "work").exists()

    # the suite key trusts it: the dry run passes, and the run reads (runs) the config
    doc["tasks"]["ade20k"]["trust_config"] = True
    write(suite, doc)
    done = bench_run(suite, "--out", out, "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not marker.exists()  # a dry run reads no config
    done = bench_run(suite, "--out", out, "--no-tables", cwd=tmp_path)
    assert marker.read_text() == "ran"
    assert done.returncode == 0, done.stdout + done.stderr
    rows = ResultsStore(out).rows()
    assert [(r["status"], r["extra"]["cell"]) for r in rows] == [("ok", "random/ade20k/seed0")]
    assert rows[0]["deviations"][-1] == "generated data"  # after the task's
    assert "smoke scale" not in rows[0]["deviations"]  # derived from the row now, not declared


def test_trust_config_flag_trusts_every_task(tmp_path):
    config = write(tmp_path / "mine.py", f"_base_ = [{str(SMOKE_SEG)!r}]\n")
    doc = {
        "name": "trust",
        "arch": "vit_test_patch8",
        "seeds": [0],
        "inits": {"random": {}},
        "tasks": {"ade20k": {"config": str(config), "iters": 2, "generate": {"n_train": 2, "n_val": 1}}},
    }
    args = add_run_arguments(argparse.ArgumentParser()).parse_args(
        [str(write(tmp_path / "s.yaml", doc)), "--out", str(tmp_path / "o"), "--dry-run"]
    )
    with pytest.raises(BenchError, match=r"is outside the package and is run as Python"):
        run_main(args)
    args.trust_config = True
    assert run_main(args) == 0
    args.trust_config = False  # the package's own config file, named by its path, needs no trust
    doc["tasks"]["ade20k"]["config"] = str(SMOKE_SEG)
    write(tmp_path / "s.yaml", doc)
    assert run_main(args) == 0
    doc["tasks"]["ade20k"]["config"] = str(config)
    suite = load_suite(tmp_path / "s.yaml")
    assert suite.tasks[0].trust_config is False
    assert suite.with_trust_config().tasks[0].trust_config is True
    doc["tasks"]["ade20k"]["trust_config"] = "yes"
    with pytest.raises(BenchError, match=r"key tasks.ade20k.trust_config must be true or false"):
        load_suite(write(tmp_path / "s.yaml", doc))


# --------------------------------------------------------------------------------------------------
# 2. Memory: YAML alias bombs, huge values quoted in messages, long lists
# --------------------------------------------------------------------------------------------------


def alias_bomb(levels: int = 9) -> str:
    """A suite of ~700 bytes whose generate.num_classes expands to 9**levels strings."""
    names = "abcdefghijklmnop"
    lists = ["&a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        ref = f"*{names[i - 1]}"
        lists.append(f"&{names[i]} [{', '.join([ref] * 9)}]")
    return (
        "name: bomb\nseeds: [0]\narch: vit_test_patch8\ninits: {random: {}}\n"
        "tasks:\n  t:\n    task: folder\n    generate:\n      num_classes: [" + ", ".join(lists) + "]\n"
    )


def test_yaml_alias_bomb_is_refused_in_bounded_time_and_memory(tmp_path):
    text = alias_bomb()
    assert len(text.encode()) < 800
    suite = write(tmp_path / "bomb.yaml", text)
    start = time.monotonic()
    done = bench_run(suite, "--out", tmp_path / "out", cwd=tmp_path, limit_bytes=6 << 30, timeout=120)
    assert time.monotonic() - start < 60
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and len(done.stderr) < 400
    assert done.stderr.startswith(f"error: {suite}: not valid YAML at line ")
    assert f"the document expands to more than {MAX_YAML_VALUES} values" in done.stderr
    assert not (tmp_path / "out").exists()


def test_alias_referring_to_itself_is_one_line(tmp_path):
    path = write(tmp_path / "loop.yaml", "name: loop\nseeds: &s [0, *s]\ninits: {}\ntasks: {}\n")
    with pytest.raises(
        BenchError,
        match=r"not valid YAML at line 2: an alias refers to a value "
        r"that contains it",
    ):
        load_suite(path)


def test_quoted_values_are_short():
    # a value shared 9 levels deep (as YAML aliases build it) stands for 9**9 items
    value = ["x"] * 9
    for _ in range(8):
        value = [value] * 9
    start = time.monotonic()
    text = _quote(value)
    assert time.monotonic() - start < 1 and len(text) <= MAX_QUOTE and text.endswith("...")
    assert _quote("y" * 10**6) == repr("y" * (MAX_QUOTE - 4))[: MAX_QUOTE - 3] + "..."
    assert _quote({"a": [1, 2]}) == "{'a': [1, 2]}" and _quote(3) == "3" and _quote("k") == "'k'"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("seeds", list(range(1000)), r"key 'seeds' has 1000 seeds; at most 64$"),
        (
            "tasks.t.generate.num_classes",
            "z" * 100_000,
            r"key tasks.t.generate.num_classes must be an integer, got 'zzz.*\.\.\.$",
        ),
        ("tasks.t.epochs", float("inf"), r"key tasks.t.epochs must be a positive number, got inf$"),
        ("tasks.t.epochs", float("nan"), r"key tasks.t.epochs must be a positive number, got nan$"),
        (
            "inits.mae",
            {"pretrain": {"steps": 2, "blr": float("inf")}},
            r"key inits.mae.pretrain.blr must be a finite number",
        ),
        (
            "tasks.t.generate.image_size",
            float("inf"),
            r"key tasks.t.generate.image_size must be an "
            r"integer, got inf$",
        ),
    ],
)
def test_limits_and_non_finite_values_are_one_line(tmp_path, key, value, message):
    doc = {
        "name": "lim",
        "arch": "vit_test_patch8",
        "seeds": [0],
        "inits": {"random": {}},
        "tasks": {"t": dict(TINY_LINEAR, generate=dict(TINY_LINEAR["generate"]))},
    }
    *parents, last = key.split(".")
    node = doc
    for part in parents:
        node = node[part]
    node[last] = value
    path = write(tmp_path / "s.yaml", doc)
    with pytest.raises(BenchError, match=message) as info:
        load_suite(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_epochs_inf_in_yaml_is_refused_at_load(tmp_path):
    text = yaml.safe_dump(
        {"name": "inf", "arch": "vit_test_patch8", "seeds": [0], "inits": {"random": {}}, "tasks": {"t": TINY_LINEAR}}
    )
    path = write(tmp_path / "s.yaml", text.replace("epochs: 1", "epochs: .inf"))
    done = bench_run(path, "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == (f"error: {path}: key tasks.t.epochs must be a positive number, got inf\n")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# 3. Suite names are plain: without --out they name results/<name>
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../../X", "/tmp/abs", "a/b", "..", ".hidden", "a\nb"])
def test_suite_name_must_be_plain(tmp_path, name):
    doc = {"name": name, "arch": "vit_test_patch8", "seeds": [0], "inits": {"random": {}}, "tasks": {"t": TINY_LINEAR}}
    path = write(tmp_path / "s.yaml", doc)
    with pytest.raises(
        BenchError,
        match=r"key 'name' is .*: a suite name may hold only letters, "
        r"digits, '_', '.' and '-'",
    ) as info:
        load_suite(path)
    assert "\n" not in str(info.value)


def test_escaping_name_writes_nothing_outside_results(tmp_path):
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    doc = {
        "name": "../../X",
        "arch": "vit_test_patch8",
        "seeds": [0],
        "inits": {"random": {}},
        "tasks": {"t": TINY_LINEAR},
    }
    done = bench_run(write(cwd / "s.yaml", doc), cwd=cwd)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "s.yaml"]


# --------------------------------------------------------------------------------------------------
# Issue #17: every missing or empty input at once; the plan is printed anyway
# --------------------------------------------------------------------------------------------------


def test_dry_run_lists_every_missing_or_empty_input(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "empty_data").mkdir()
    (tmp_path / "empty_images").mkdir()
    doc = {
        "name": "inputs",
        "arch": "vit_test_patch8",
        "seeds": [0],
        "inits": {
            "supervised": {"checkpoint": str(tmp_path / "missing.pth")},
            "beit": {"checkpoint": str(tmp_path / "empty.pth")},
            "mae": {"pretrain": {"steps": 1, "data": str(tmp_path / "empty_images")}},
            "mocov3": {"pretrain": {"steps": 1, "data": "digits"}},
        },
        "tasks": {
            "a": {**TINY_LINEAR, "generate": None, "data": str(tmp_path / "empty_data")},
            "b": {**TINY_LINEAR, "protocol": "finetune", "generate": None, "data": str(tmp_path / "nowhere")},
            "c": {**TINY_LINEAR, "task": "inat2017", "config": str(tmp_path / "nope.yaml")},
        },
    }
    del doc["tasks"]["a"]["generate"], doc["tasks"]["b"]["generate"]
    suite = write(tmp_path / "s.yaml", doc)
    done = bench_run(suite, "--out", tmp_path / "out", "--dry-run", cwd=tmp_path)
    assert done.returncode == 2
    problems = [
        f"key 'inits.supervised.checkpoint': file {tmp_path}/missing.pth not found",
        f"key 'tasks.a.data': folder {tmp_path}/empty_data is empty",
        f"key 'tasks.b.data': {tmp_path}/nowhere not found",
        f"key 'tasks.c.config': file {tmp_path}/nope.yaml not found",
        f"key 'inits.beit.checkpoint': file {tmp_path}/empty.pth is empty",
        f"key 'inits.mae.pretrain.data': folder {tmp_path}/empty_images is empty",
    ]
    lines = done.stderr.splitlines()
    assert sorted(lines[:-1]) == sorted(f"problem: {p}" for p in problems)
    assert lines[-1].startswith(
        f"error: {suite}: 6 problems with the suite's inputs (listed above); the first: key 'inits.mae.pretrain.data'"
    )
    # the plan is printed anyway: 2 pretraining + 4 inits x 3 tasks, with config and schedule
    assert "14 cells, 14 to run" in done.stdout
    assert (
        re.search(r"^mocov3/pretrain +pretrain +mocov3_vit_test_patch8 +mocov3 +todo ", done.stdout, re.M)
        and "1 pretraining steps" in done.stdout
    )
    assert "2 pretraining steps" in done.stdout.splitlines()[-2]  # the cost line, before the count
    assert done.stdout.splitlines()[-1].startswith("14 cells, 14 to run")
    assert "supervised/c/seed0" in done.stdout and "folder epochs" in done.stdout
    # a real run refuses the same way, before anything runs
    again = bench_run(suite, "--out", tmp_path / "out", cwd=tmp_path)
    assert again.returncode == 2 and again.stderr == done.stderr and again.stdout == ""
    assert not (tmp_path / "out" / "work").exists()


# --------------------------------------------------------------------------------------------------
# A full disk while writing error.log costs the traceback only
# --------------------------------------------------------------------------------------------------


def test_failed_error_log_write_still_records_the_row_and_runs_the_next_cell(tmp_path, capsys, monkeypatch):
    import builtins

    import bench.runner.cell as runner_cell

    real_open = builtins.open

    def full_disk_open(file, mode="r", *args, **kwargs):
        if Path(file).name == runner_cell.ERROR_LOG:
            raise OSError(28, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(runner_cell, "open", full_disk_open, raising=False)
    doc = {
        "name": "disk",
        "arch": "vit_test_patch8",
        "seeds": [0],
        "inits": {"random": {}},
        "tasks": {
            "bad": {**TINY_LINEAR, "protocol": "finetune", "generate": {**TINY_LINEAR["generate"], "num_classes": 11}},
            "good": TINY_LINEAR,
        },
    }
    args = add_run_arguments(argparse.ArgumentParser()).parse_args(
        [str(write(tmp_path / "s.yaml", doc)), "--out", str(tmp_path / "out"), "--no-tables", "--jobs", "1"]
    )
    assert run_main(args) == 1
    rows = {r["extra"]["cell"]: r for r in ResultsStore(tmp_path / "out").rows()}
    assert rows["random/bad/seed0"]["status"] == "failed"
    assert rows["random/bad/seed0"]["error"] == ("BenchError: num_classes must be 1..10 (one per digit), got 11")
    assert rows["random/good/seed0"]["status"] == "ok"
    assert not (tmp_path / "out/work/random/bad/seed0/error.log").exists()
    err = capsys.readouterr().err
    assert "note: could not write " in err and "No space left on device" in err
