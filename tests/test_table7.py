"""Table 7 wired into the commands: `bench table` writes table7_targets only when a row needs it,
Tables 3-5 put a raw-pixel / tokens MAE beside Table 7's number for its target, a suite's bad MAE
target fails at load, and the demo defaults share BEiT's tokenizer schedule without touching a
pixel run."""

import json

import pytest
import yaml

from backbones.pretrainers import DEMO_DEFAULTS, pretrain
from backbones.provenance import TOKEN_MARK
from bench.core.errors import BenchError
from bench.core.results import ResultsStore, make_row
from bench.suite import load_suite
from bench.tables import build_tables, load_reference, run_table, target_tables

# The paper's ImageNet-1K fine-tuning top-1 of MAE ViT-L (He et al. 2021): Table 3 (normalised
# pixels) and Table 7's rows 'pixel (w/o norm)' and 'dVAE token'; three different numbers.
PAPER_VIT_L = {"pixel_norm": 85.9, "pixel": 85.1, "tokens": 85.7}


def _prov(target):
    return {"source": "self-pretrained", "verified": "its own run record", "method": "mae", "data": "digits"} | {
        "steps": 40,
        "target": target,
    }


def _store(path, targets, seeds=(0, 1)):
    """A store of ImageNet fine-tuning rows of MAE ViT-L, one label per target, two seeds each."""
    store = ResultsStore(path)
    for i, target in enumerate(targets):
        for seed in seeds:
            store.append(
                make_row(
                    task="imagenet",
                    protocol="finetune",
                    init="mae",
                    backbone="vit_large_patch16",
                    seed=seed,
                    metrics={"top1": 70.0 + i + seed},
                    label=f"mae_{target}",
                    provenance=_prov(target),
                )
            )
    return store


def test_main_table_puts_each_target_beside_its_own_paper_number(tmp_path):
    store = _store(tmp_path / "results", ["pixel_norm", "pixel", "tokens"])
    # the official visualisation release (raw-pixel target), as provenance_of describes it
    release = {"source": "facebookresearch/mae (visualisation model)", "official": True, "init": "mae"}
    release |= {"data": "ImageNet-1K", "epochs": 1600, "target": "pixels", "verified": "file name and key layout"}
    store.append(make_row(task="imagenet", protocol="finetune", init="mae", backbone="vit_large_patch16", seed=0,
                          metrics={"top1": 75.0}, label="mae_visualize", provenance=release))  # fmt: skip
    tables = build_tables(store.dataframe(), load_reference())
    table = tables["table3_imagenet"]
    groups = list(dict.fromkeys(g for g, _, _ in table.columns))
    assert len(groups) == 1
    for target, paper in PAPER_VIT_L.items():
        assert table.loc[f"mae_{target}", (groups[0], "ViT-L", "published")] == paper, target
    assert table.loc["mae_visualize", (groups[0], "ViT-L", "published")] == PAPER_VIT_L["pixel"]
    info = table.attrs["info"]
    footnotes = table.attrs["footnotes"]
    token_mark = next(mark for text, mark in footnotes.items() if TOKEN_MARK in text)
    assert token_mark in info[("mae_tokens", groups[0], "ViT-L")]["marks"]
    assert token_mark not in info[("mae_pixel_norm", groups[0], "ViT-L")]["marks"]


def test_bench_table_writes_table7_only_when_a_row_has_another_target(tmp_path):
    both = _store(tmp_path / "both", ["pixel_norm", "tokens"])
    written = run_table(both.path, tmp_path / "out_both", formats=("csv", "md"), plots=False)
    names = sorted(p.name for p in written)
    assert "table7_targets.csv" in names and "table7_targets.md" in names and "table3_imagenet.csv" in names
    md = (tmp_path / "out_both" / "table7_targets.md").read_text()
    assert "tokens (suite VQ)" in md and "pixel (w/ norm)" in md and TOKEN_MARK in md
    # the tokens row's mean (seeds 0, 1: 71, 72) beside the paper's dVAE-token number
    rows = [r for r in (tmp_path / "out_both" / "table7_targets.csv").read_text().splitlines() if "tokens" in r]
    assert rows and "71.5" in rows[0] and "85.7" in rows[0], rows
    only = _store(tmp_path / "only", ["pixel_norm"])
    written = run_table(only.path, tmp_path / "out_only", formats=("csv", "md"), plots=False)
    assert [p.name for p in written if p.name.startswith("table7")] == []
    assert not list((tmp_path / "out_only").glob("table7*"))
    # a tokens row without the task's headline metric (top-1) has no cell: no Table 7, no error
    odd = ResultsStore(tmp_path / "odd")
    odd.append(make_row(task="imagenet", protocol="finetune", init="mae", backbone="vit_large_patch16", seed=0,
                        metrics={"top5": 90.0}, provenance=_prov("tokens")))  # fmt: skip
    assert target_tables(odd.dataframe(), load_reference()) == {}


def _suite(tmp_path, pretrain):
    doc = {
        "name": "t7",
        "arch": "vit_test_patch8",
        "seeds": [0],
        "inits": {"mae_tok": {"init": "mae", "pretrain": {"method": "mae", "data": "digits", "steps": 2, **pretrain}}},
        "tasks": {"digits": {"task": "digits", "protocol": "finetune", "generate": {}}},
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    "pretrain, line",
    [
        (
            {"target": "dvae"},
            "key inits.mae_tok.pretrain.target: --target 'dvae': must be one of pixel_norm, pixel, tokens",
        ),
        (
            {"target": "tokens", "norm_pix_loss": True},
            "key inits.mae_tok.pretrain.target: --target tokens contradicts norm_pix_loss=True",
        ),
        (
            {"norm_pix_loss": "yes"},
            "key inits.mae_tok.pretrain.norm_pix_loss: norm_pix_loss must be true or false, got 'yes'",
        ),
        (
            {"target": "tokens", "vocab_size": 1},
            "key inits.mae_tok.pretrain.vocab_size must be an integer >= 2, got 1",
        ),
    ],
)
def test_suite_refuses_a_bad_mae_target_at_load(tmp_path, pretrain, line):
    path = _suite(tmp_path, pretrain)
    with pytest.raises(BenchError) as info:
        load_suite(path)
    assert str(info.value).startswith(f"{path}: {line}") and "\n" not in str(info.value)


def test_suite_loads_each_mae_target(tmp_path):
    for target in ("pixel_norm", "pixel", "tokens"):
        (entry,) = load_suite(_suite(tmp_path, {"target": target, "vocab_size": 16})).inits
        assert entry.label == "mae_tok" and entry.pretrain["target"] == target and entry.pretrain["vocab_size"] == 16
    (entry,) = load_suite(_suite(tmp_path, {"norm_pix_loss": False})).inits
    assert entry.pretrain["norm_pix_loss"] is False


def test_demo_defaults_share_the_tokenizer_schedule_and_a_pixel_run_ignores_it(tmp_path, one_thread):
    beit = DEMO_DEFAULTS["beit"]["tokenizer_train"]
    assert DEMO_DEFAULTS["mae"]["tokenizer_train"] is beit
    assert beit == {"epochs": 10, "warmup_epochs": 1, "blr": 2e-3}
    out = tmp_path / "mae"
    path = pretrain("mae", "vit_test_patch8", out, steps=1, batch_size=2, data="digits", progress=False)
    settings = json.loads((out / "train_settings.json").read_text())
    assert settings["target"] == "pixel_norm" and "vocab_size" not in settings and "tokenizer" not in settings
    assert not (out / "tokenizer").exists() and not (out / "tokenizer.pth").exists()
    assert path == out / "pretrain.pth"
