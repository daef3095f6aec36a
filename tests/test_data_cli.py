"""`bench data` writes every layout a task's reader takes, and the reader accepts it."""

import pytest

from bench.cli import main
from tasks.registry import TASKS

SMALL = {"coco": ["--n-train", "2", "--n-val", "1", "--image-size", "64"], "ade20k": ["--n-train", "2", "--n-val", "1"]}


@pytest.mark.parametrize("task", [name for name, spec in TASKS.items() if spec.generator])
def test_every_layout_is_written_and_read_back(task, tmp_path, capsys):
    out = tmp_path / task
    args = SMALL.get(task, ["--n-train", "2", "--n-val", "1", "--num-classes", "3"])
    assert main(["data", task, "--out", str(out), *args]) == 0
    root = next(p for p in [out, *out.iterdir()] if str(p) in capsys.readouterr().out)
    data = TASKS[task].reader(root)  # the task's own reader, as `bench cls|seg|det --data-root` reads it
    assert data is not None and any(root.rglob("*.*"))


def test_bad_requests_are_one_line(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    assert main(["data", "digits", "--out", str(tmp_path / "full")]) == 2
    assert "exists and is not an empty folder (option --out)" in capsys.readouterr().err
    assert (tmp_path / "full" / "x").read_text() == "mine"
    assert main(["data", "coco", "--out", str(tmp_path / "c"), "--num-classes", "3"]) == 2
    assert "bench data coco: --num-classes does not apply to this layout" in capsys.readouterr().err
    assert main(["data", "folder", "--out", str(tmp_path / "f"), "--n-train", "0"]) == 2
    assert "--n-train must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and not (tmp_path / "f").exists()
