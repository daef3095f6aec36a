"""``--cfg-options`` that name code need ``--trust-config`` (mmengine's ``Registry.get`` imports any
``module.attr`` a ``type`` names; ``custom_imports`` imports modules; ``_target_`` is called), plain
values stay free; ``--config NAME`` reads only the package's own files, and the row says which."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core.errors import BenchError
from tasks.dense.runner import options_naming_code, registered_type
from tasks.segmentation.config import CONFIGS, resolve_config

REPO = Path(__file__).resolve().parents[1]
TINY = "random_vit_test_patch8"

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


def _cli(*args, cwd=REPO):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    from tasks.segmentation.ade_data import make_ade20k_dataset

    root = tmp_path_factory.mktemp("ade")
    make_ade20k_dataset(root, n_train=4, n_val=2, image_size=(64, 64), seed=0)
    return root / "ADEChallengeData2016"


def test_registered_names_are_free_and_importable_names_are_code():
    assert registered_type("FCNHead", ("mmseg",)) and registered_type("mmseg.UPerHead", ("mmseg",))
    assert registered_type("IterTimerHook", ("mmseg",))  # mmengine's own registry
    for name in ("os.system", "subprocess.check_call", "evil", "mmseg.os", "a.b.c", "", 3, None):
        assert not registered_type(name, ("mmseg",)), name
    free = {"optim_wrapper.optimizer.lr": 0.002, "model.decode_head.type": "FCNHead", "work_dir": "os.system"}
    assert options_naming_code(free, ("mmseg",)) == []
    code = {
        "default_hooks.timer.type": "os.system",
        "default_hooks.timer.command": "touch${IFS}x",  # a plain value: only the type above is code
        "custom_imports.imports": ["os"],
        "model.roi_heads.x._target_": "subprocess.check_call",
        "model.backbone._scope_": "evil",
        "model.decode_head.type": "evil",  # a plain name no registry holds: mmengine imports ./evil.py
    }
    assert options_naming_code(code, ("mmseg",)) == [
        "default_hooks.timer.type=os.system",
        "custom_imports.imports=['os']",
        "model.roi_heads.x._target_=subprocess.check_call",
        "model.backbone._scope_=evil",
        "model.decode_head.type=evil",
    ]
    # found by the round-3 fuzzer: a constructor is looked up like a type, and a sub-config counts too
    deeper = {
        "optim_wrapper.constructor": "evilmod.x",
        "optim_wrapper.paramwise_cfg": {"custom_keys": {"pos_embed": {"decay_mult": 0.0}}},  # plain values
        "model.neck": {"type": "os.system", "command": "touch x"},
        "model.test_cfg": [{"mode": "whole"}, {"type": "evil"}],
    }
    assert options_naming_code(deeper, ("mmseg",)) == [
        "optim_wrapper.constructor=evilmod.x",
        "model.neck={'type': 'os.system', 'command': 'touch x'}",
        "model.test_cfg=[{'mode': 'whole'}, {'type': 'evil'}]",
    ]
    assert options_naming_code({"optim_wrapper.constructor": "LayerDecayOptimizerConstructor"}, ("mmseg",)) == []


def test_the_timer_hook_exploit_is_refused_in_one_line_and_runs_nothing(ade, tmp_path):
    marker = tmp_path / "PWNED"
    work = tmp_path / "w"
    p = _cli(
        "seg",
        "--backbone",
        TINY,
        "--data-root",
        ade,
        "--iters",
        1,
        "--out",
        work,
        "--cfg-options",
        "default_hooks.timer.type=os.system",
        f"default_hooks.timer.command=touch${{IFS}}{marker}",
    )
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip() == (
        "error: --cfg-options default_hooks.timer.type=os.system: names code that mmengine would import or run "
        "(a type that is no registered name, _target_, custom_imports, a scope); pass --trust-config if you trust it"
    )
    assert not marker.exists() and not work.exists()


def test_config_names_resolve_only_to_the_packages_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").write_text("raise SystemExit('read')\n")  # a stray file named like the config
    assert resolve_config("smoke") == (CONFIGS["smoke"], "smoke")
    with pytest.raises(BenchError, match=r"--config './smoke': not one of smoke, paper_vit_base, paper_vit_large"):
        resolve_config("./smoke")  # looks like a path, but is no .py config
    (tmp_path / "mine.py").write_text("x = 1\n")
    assert resolve_config("mine.py") == (Path("mine.py"), "mine.py") and resolve_config("./mine.py")[0].is_file()
    with pytest.raises(BenchError, match=r"--config 'mine': not one of .*a file of your own is given as a path"):
        resolve_config("mine")


def test_a_stray_smoke_file_is_not_read_and_the_row_names_the_file_used(ade, tmp_path):
    marker = tmp_path / "READ"
    (tmp_path / "smoke").write_text(f"open({str(marker)!r}, 'w').close()\n")
    store = tmp_path / "rows.jsonl"
    p = _cli(
        "seg",
        "--backbone",
        TINY,
        "--data-root",
        ade,
        "--config",
        "smoke",
        "--crop-size",
        64,
        "--iters",
        1,
        "--out",
        tmp_path / "w",
        "--results",
        store,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert not marker.exists()
    from bench.core.results import ResultsStore

    [row] = ResultsStore(store).rows()
    assert row["extra"]["config"] == "smoke" and row["extra"]["config_file"] == str(CONFIGS["smoke"])


def test_the_runs_own_keys_are_set_by_their_options_only():
    from mmengine.config import Config

    from tasks.dense.runner import apply_cfg_options

    for key in ("work_dir", "load_from", "resume"):
        cfg = Config(dict(work_dir="run", load_from=None, resume=False))
        with pytest.raises(BenchError, match=rf"--cfg-options {key}: the run's folder, weights and resuming"):
            apply_cfg_options(cfg, {key: "/tmp/elsewhere"}, "x", trust_config=True)
        assert cfg.work_dir == "run"
