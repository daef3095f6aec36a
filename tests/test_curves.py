"""The convergence plot reads the cells' curve.jsonl files as the classification runs write them."""

import json

from bench.curves import plot_convergence, read_curves


def _curve(root, label, task, seed, points, junk=False):
    folder = root / "work" / label / task / f"seed{seed}"
    folder.mkdir(parents=True)
    lines = [json.dumps({"epoch": e, "step": 3 * e, "train_loss": 1.0, "eval_top1": t}) for e, t in points]
    (folder / "curve.jsonl").write_text("\n".join(lines + (['{"epoch": 9'] if junk else [])) + "\n")


def test_curves_are_read_per_task_label_and_seed_and_plotted(tmp_path):
    _curve(tmp_path, "mae", "digits", 0, [(20, 70.0), (10, 50.0)])
    _curve(tmp_path, "mae", "digits", 1, [(10, 54.0), (20, 74.0)], junk=True)  # a line cut by a kill
    _curve(tmp_path, "random", "digits", 0, [(10, 40.0), (20, 60.0)])
    _curve(tmp_path, "random", "digits_linear", 0, [(10, 30.0)])
    (tmp_path / "work" / "mae" / "digits" / "search" / "seed0").mkdir(parents=True)  # candidates: not read
    assert read_curves(tmp_path) == {
        "digits": {
            "mae": {0: [(10.0, 50.0), (20.0, 70.0)], 1: [(10.0, 54.0), (20.0, 74.0)]},
            "random": {0: [(10.0, 40.0), (20.0, 60.0)]},
        },
        "digits_linear": {"random": {0: [(10.0, 30.0)]}},
    }
    path = plot_convergence(tmp_path)
    assert path == tmp_path / "convergence.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_curves_no_plot(tmp_path):
    assert plot_convergence(tmp_path) is None and not (tmp_path / "convergence.png").exists()
