"""Paper-style tables: aggregation against hand computation, LaTeX/Markdown/CSV output, plots,
published numbers, and the `bench table` entry point."""

import argparse
import math
import re

import pandas as pd
import pytest

from bench.core.errors import BenchError
from bench.core.results import ResultsStore, default_run_id
from bench.tables import (
    DEFAULT_REFERENCE,
    add_table_arguments,
    backbone_label,
    build_tables,
    load_reference,
    plot_tables,
    run_table,
    table_main,
    table_to_long,
    to_latex,
    to_markdown,
    write_tables,
)

# Hand-made COCO results: APbox per seed.
APBOX = {
    ("supervised", "vit_base_patch16"): [47.0, 48.0, 49.5],
    ("mae", "vit_base_patch16"): [50.0, 51.0],
    ("beit", "vit_base_patch16"): [49.0],
    ("mae", "vit_large_patch16"): [53.0, 54.0, 55.0],
    ("random", "vit_large_patch16"): [40.0, 41.0],
    ("my_vit_base_patch16%", "vit_base_patch16"): [45.0, 46.0],
}


def row(
    init,
    backbone,
    seed,
    metrics,
    task="coco",
    protocol="maskrcnn_fpn",
    k=None,
    status="ok",
    suite="paper",
    extra=None,
    run_id=None,
):
    extra = extra or {}
    return {
        "schema": 2,
        "run_id": run_id or default_run_id(suite, task, protocol, k, init, backbone, seed, extra),
        "suite": suite,
        "task": task,
        "protocol": protocol,
        "k": k,
        "init": init,
        "backbone": backbone,
        "checkpoint_sha256": None,
        "seed": seed,
        "metrics": metrics,
        "status": status,
        "error": None if status == "ok" else "diverged",
        "iterations": 100,
        "wall_time_s": 10.0,
        "config_hash": "c0ffee",
        "code_version": "test",
        "device": "cpu",
        "date": "2024-01-01T00:00:00+00:00",
        "extra": extra,
        "deviations": [],
    }


@pytest.fixture
def store(tmp_path):
    store = ResultsStore(tmp_path / "results")
    for (init, backbone), values in APBOX.items():
        for seed, value in enumerate(values):
            store.append(row(init, backbone, seed, {"APbox": value, "APmask": value - 5.0}))
    # a failed run and an earlier, superseded record of a finished run must not count
    store.append(row("mae", "vit_base_patch16", 7, {}, status="failed"))
    store.append(row("supervised", "vit_large_patch16", 0, {"APbox": 10.0, "APmask": 5.0}, run_id="dup"))
    store.append(row("supervised", "vit_large_patch16", 0, {"APbox": 49.0, "APmask": 44.0}, run_id="dup"))
    # ADE20K and a ViT-H448 transfer run
    store.append(row("mae", "vit_base_patch16", 0, {"mIoU": 48.0}, "ade20k", "upernet"))
    store.append(row("mae", "vit_huge_patch14", 0, {"top1": 80.0}, "inat2017", "finetune", extra={"img_size": 448}))
    store.append(row("mae", "vit_huge_patch14", 0, {"top1": 79.0}, "inat2017", "finetune"))
    # partial fine-tuning curve and a mask-ratio sweep of linear probing
    for init, base in (("mae", 73.0), ("mocov3", 76.0)):
        for k in (0, 1, 4):
            store.append(row(init, "vit_large_patch16", 0, {"top1": base + 2 * k}, "imagenet", "partial", k=k))
    for ratio, top1 in ((0.5, 60.0), (0.75, 65.0), (0.9, 62.0)):
        store.append(
            row("mae", "vit_demo_patch8", 0, {"top1": top1}, "imagenet", "linear", extra={"mask_ratio": ratio})
        )
    return store


def test_aggregation_matches_hand_computation(store):
    tables = build_tables(store.dataframe(), load_reference())
    t = tables["table4_coco"]
    # supervised ViT-B: 47.0, 48.0, 49.5 -> mean 144.5/3, sample std sqrt(3.1666.../2)
    assert t.loc["supervised", ("APbox", "ViT-B", "mean")] == pytest.approx(48.1666667)
    assert t.loc["supervised", ("APbox", "ViT-B", "std")] == pytest.approx(1.2583057)
    assert t.loc["supervised", ("APbox", "ViT-B", "n")] == 3
    # mae ViT-B: 50.0, 51.0 -> mean 50.5, std sqrt(0.5), delta 50.5 - 48.1666...
    assert t.loc["mae", ("APbox", "ViT-B", "mean")] == pytest.approx(50.5)
    assert t.loc["mae", ("APbox", "ViT-B", "std")] == pytest.approx(math.sqrt(0.5))
    assert t.loc["mae", ("APbox", "ViT-B", "delta")] == pytest.approx(2.3333333)
    assert t.loc["mae", ("APmask", "ViT-B", "mean")] == pytest.approx(45.5)
    # the failed seed-7 run did not count
    assert t.loc["mae", ("APbox", "ViT-B", "n")] == 2
    # a single seed: std is NaN, the delta still exists
    assert t.loc["beit", ("APbox", "ViT-B", "n")] == 1
    assert math.isnan(t.loc["beit", ("APbox", "ViT-B", "std")])
    assert t.loc["beit", ("APbox", "ViT-B", "delta")] == pytest.approx(49.0 - 48.1666667)
    # run_id recorded twice: only the last row counts (49.0, not the mean with 10.0)
    assert t.loc["supervised", ("APbox", "ViT-L", "mean")] == 49.0
    assert t.loc["supervised", ("APbox", "ViT-L", "n")] == 1
    assert t.loc["mae", ("APbox", "ViT-L", "delta")] == pytest.approx(54.0 - 49.0)
    assert t.loc["mae", ("APbox", "ViT-L", "std")] == pytest.approx(1.0)
    assert t.loc["supervised", ("APbox", "ViT-B", "delta")] == 0.0
    # published numbers side by side (He et al. 2021, Table 4)
    assert t.loc["supervised", ("APbox", "ViT-B", "published")] == 47.9
    assert t.loc["mae", ("APbox", "ViT-L", "published")] == 53.3
    assert t.loc["mae", ("APmask", "ViT-L", "published")] == 47.2
    assert math.isnan(t.loc["random", ("APbox", "ViT-L", "published")])
    # layout: inits in the paper's order then others, backbones small to large
    assert list(t.index) == ["random", "supervised", "beit", "mae", "my_vit_base_patch16%"]
    assert list(dict.fromkeys(t.columns.get_level_values("column"))) == ["ViT-B", "ViT-L"]
    assert list(dict.fromkeys(t.columns.get_level_values("group"))) == ["APbox", "APmask"]


def test_other_tables_and_labels(store):
    tables = build_tables(store.dataframe(), load_reference())
    assert set(tables) == {"table4_coco", "table5_ade20k", "table6_transfer_cls", "linear_probe", "partial_finetune"}
    t6 = tables["table6_transfer_cls"]
    assert t6.loc["mae", ("iNat 2017", "ViT-H448", "mean")] == 80.0
    assert t6.loc["mae", ("iNat 2017", "ViT-H448", "published")] == 83.4
    assert t6.loc["mae", ("iNat 2017", "ViT-H", "published")] == 79.3
    assert math.isnan(t6.loc["mae", ("iNat 2017", "ViT-H", "delta")])  # no supervised row
    partial = tables["partial_finetune"]
    assert partial.loc["mae", ("ImageNet ViT-L", "k=4", "mean")] == 81.0
    assert partial.loc["mae", ("ImageNet ViT-L", "k=0", "published")] == 73.5
    assert partial.loc["mae", ("ImageNet ViT-L", "k=1", "published")] == 81.0
    assert list(dict.fromkeys(partial.columns.get_level_values("column"))) == ["k=0", "k=1", "k=4"]
    # three mask ratios of one init are three rows, not one averaged cell
    assert list(tables["linear_probe"].index) == ["mae mask=0.5", "mae mask=0.75", "mae mask=0.9"]
    assert tables["table5_ade20k"].loc["mae", ("mIoU", "ViT-B", "published")] == 48.1
    assert backbone_label("vit_huge_patch14", 448) == "ViT-H448"
    assert backbone_label("vit_base_patch8") == "ViT-B/8"
    assert backbone_label("vit_demo_patch8", 64) == "ViT-demo/8@64"
    assert backbone_label("resnet50") == "resnet50"


def _latex_columns(line: str) -> int:
    """Tabular columns a LaTeX row spans (\\multicolumn{n} counts n)."""
    cells = re.split(r"(?<!\\)&", line.rstrip().removesuffix(r"\\"))
    total = 0
    for cell in cells:
        m = re.search(r"\\multicolumn\{(\d+)\}", cell)
        total += int(m.group(1)) if m else 1
    return total


def test_latex_is_balanced_escaped_and_bolds_only_the_tested_best(store):
    t = build_tables(store.dataframe(), load_reference())["table4_coco"]
    tex = to_latex(t)
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 1
    assert r"\caption{COCO Mask R-CNN, APbox / APmask (cf. MAE Table 4). Cells: mean [95 \% interval]" in tex
    assert "a row is one checkpoint, so intervals leave out pretraining-run variance" in tex
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    spec = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", tex).group(1)
    body = tex[tex.index(r"\toprule") + 8 : tex.index(r"\bottomrule")]
    rows = [ln for ln in body.splitlines() if ln.rstrip().endswith(r"\\")]
    assert len(rows) == 2 + len(t.index)  # two header rows, one per init
    for line in rows:
        assert _latex_columns(line) == len(spec), line
    # ViT-B APbox and APmask each get an adjacent 'paper' column; ViT-L too: 1 + 2 * 2 * 2
    assert len(spec) == 9
    # names are escaped: no bare _ or % outside math
    assert r"my\_vit\_base\_patch16\%" in tex
    assert re.search(r"(?<!\\)_", tex.replace(r"\_", "")) is None
    # ViT-L: mae 53, 54, 55 against supervised's one run (49.0): one run against seeds, untested.
    # ViT-B: mae 50, 51 against beit's one run: untested too. Nothing is bold.
    assert tex.count(r"\textbf") == 0
    mae = next(ln for ln in rows if ln.startswith("mae &"))
    assert "50.5 [44.1, 56.9] n=2" in mae  # t(0.975, 1) * 0.7071 / sqrt(2) = 6.353
    assert "not tested against the runner-up" in tex
    assert "$\\pm$ --" not in tex  # no empty spread for single runs
    beit = next(ln for ln in rows if ln.startswith("beit &"))
    assert beit.startswith(r"beit & 49.0\textsuperscript{")  # no interval, a footnote says why


def test_latex_minus_signs_and_markdown_minus():
    from bench.tables.render import _fmt

    assert _fmt(-0.7, 1, "tex") == "$-$0.7" and _fmt(-0.7, 1) == "\u22120.7"
    assert _fmt(-0.04, 1) == "0.0"  # no negative zero
    assert _fmt(2.25, 1) == "2.2" and _fmt(2.35, 1) == "2.4"


def test_markdown_table_has_header_separator_and_even_rows(store):
    md = to_markdown(build_tables(store.dataframe(), load_reference())["table4_coco"])
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert re.fullmatch(r"\|(:?-{3,}:?\|)+", lines[1])
    counts = {ln.count(" | ") for ln in lines if not ln.startswith("|:")}
    assert len(counts) == 1
    assert lines[0].startswith("| init | APbox ViT-B | APbox ViT-B (paper) |")
    mae = next(ln for ln in lines if ln.startswith("| mae |"))
    # marks: not tested against the runner-up; no provenance recorded beside the paper's number
    assert re.search(r"\| 50\.5 \[44\.1, 56\.9\] n=2<sup>[a-z],[a-z]</sup> \| 50\.3<sup>[a-z]</sup> \|", mae)
    assert "MAE ViT-B: checkpoint of unknown provenance" in md
    assert "± –" not in md and "Δ" not in md
    assert "paper: Table 4: 'All entries are based on our implementation'" in md  # the note column


def test_write_tables_csv_is_rounded_with_raw_values_and_atomic(store, tmp_path):
    import os

    tables = build_tables(store.dataframe(), load_reference())
    out = tmp_path / "out"
    old = os.umask(0o027)
    try:
        paths = write_tables(tables, out)
    finally:
        os.umask(old)
    assert sorted(p.name for p in paths) == sorted(f"{name}.{fmt}" for name in tables for fmt in ("csv", "tex", "md"))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    assert {p.stat().st_mode & 0o777 for p in paths} == {0o640}  # the umask, not mkstemp's 0600
    csv = pd.read_csv(out / "table4_coco.csv")
    assert list(csv.columns) == [
        "init",
        "block",
        "group",
        "column",
        "mean",
        "ci_low",
        "ci_high",
        "n",
        "delta",
        "published",
        "paper_match",
        "interval",
        "mark",
        "notes",
        "mean_raw",
        "std_raw",
        "ci_low_raw",
        "ci_high_raw",
        "delta_raw",
    ]
    cell = csv[(csv["init"] == "supervised") & (csv["group"] == "APbox") & (csv["column"] == "ViT-B")].iloc[0]
    assert cell["mean_raw"] == pytest.approx(144.5 / 3, abs=1e-12)
    assert cell["mean"] == 48.2
    assert cell["std_raw"] == pytest.approx(1.2583057)
    assert cell["n"] == 3 and cell["published"] == 47.9 and cell["delta"] == 0.0
    assert cell["interval"] == "t-interval over 3 seeds"
    text = (out / "table4_coco.csv").read_text()
    shown = [line.split(",")[4:7] for line in text.splitlines()[1:]]  # mean, ci_low, ci_high
    assert all(len(v.split(".")[-1]) <= 1 for vs in shown for v in vs)  # shown digits only
    with pytest.raises(BenchError, match="'pdf'"):
        write_tables(tables, out, formats=("pdf",))


def test_plots_are_non_empty_pngs_and_skipped_without_data(store, tmp_path):
    paths = plot_tables(store.dataframe(), tmp_path / "plots")
    names = {p.name for p in paths}
    assert {
        "bars_coco_maskrcnn_fpn.png",
        "bars_ade20k_upernet.png",
        "partial_imagenet_ViT-L.png",
        "mask_ratio_imagenet.png",
    } <= names
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    coco_only = store.dataframe(task="coco")
    names = {p.name for p in plot_tables(coco_only, tmp_path / "coco")}
    assert names == {"bars_coco_maskrcnn_fpn.png"}


def test_run_table_with_no_match_names_file_and_filters(store, tmp_path):
    with pytest.raises(BenchError) as e:
        run_table(store.path, tmp_path / "out", suite="nope", task="coco")
    message = str(e.value)
    assert str(store.path) in message and "suite='nope'" in message and "task='coco'" in message
    assert "\n" not in message
    assert not (tmp_path / "out").exists()  # nothing written
    with pytest.raises(BenchError, match="results file not found"):
        run_table(tmp_path / "missing", tmp_path / "out")


def test_run_table_through_cli_arguments(store, tmp_path, capsys):
    parser = add_table_arguments(argparse.ArgumentParser(prog="bench table"))
    args = parser.parse_args(
        [
            "--results",
            str(store.path),
            "--out",
            str(tmp_path / "t"),
            "--task",
            "coco",
            "--formats",
            "md,csv",
            "--no-plots",
        ]
    )
    assert table_main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = [str(tmp_path / "t" / f"table4_coco.{f}") for f in ("md", "csv")] + [str(tmp_path / "t" / "answer.md")]
    assert sorted(printed[:3]) == sorted(expected)
    # then the answer, as written to answer.md
    assert "\n".join(printed[4:]) + "\n" == (tmp_path / "t" / "answer.md").read_text()
    assert "47.9" in (tmp_path / "t" / "table4_coco.md").read_text()  # default reference used


def test_reference_csv_is_well_formed_and_bad_values_are_refused(tmp_path):
    ref = load_reference(DEFAULT_REFERENCE)
    keys = ref[["task", "protocol", "metric", "init", "backbone", "img_size", "k"]].astype(str)
    assert not keys.duplicated().any()
    assert ((ref["value"] > 0) & (ref["value"] < 100)).all()
    assert ref["source"].str.startswith("He et al. 2021, ").all()
    assert set(ref["init"]) <= {"random", "supervised", "mocov3", "beit", "mae", "dino"}
    bad = tmp_path / "bad.csv"
    text = DEFAULT_REFERENCE.read_text().splitlines()
    text[1] = text[1].replace(",82.3,", ",eighty,")
    bad.write_text("\n".join(text) + "\n")
    with pytest.raises(BenchError, match=r"bad\.csv line 2: column 'value'"):
        load_reference(bad)


# Rows as `bench det` / `bench seg` record them: bench.core.results.make_row with the extras of
# tasks/detection/run.py and tasks/segmentation/run.py (via tasks.dense.runner.dense_row), where
# extra['img_size'] is the real training input: 1024 for the paper's COCO recipe, 512 for ADE20K.
def dense_row(task, protocol, init, arch, seed, metrics, extra):
    from bench.core.results import make_row

    return make_row(
        task=task,
        protocol=protocol,
        init=init,
        backbone=arch,
        seed=seed,
        metrics=metrics,
        suite="paper",
        checkpoint=None,
        config={"model": arch},
        iterations=100,
        wall_time_s=12.5,
        extra=dict(
            backbone_name=f"{init}_{arch}",
            config="paper",
            work_dir="/w",
            start_iter=0,
            batch_size=16,
            world_size=8,
            cfg_options={},
            **extra,
        ),
    )


def det_row(init, arch, seed, apbox, img_size=1024, variant="fpn"):
    return dense_row(
        "coco",
        f"maskrcnn_{variant}",
        init,
        arch,
        seed,
        {"APbox": apbox, "APmask": apbox - 4.0, "APbox50": apbox + 20.0},
        dict(
            variant=variant,
            img_size=img_size,
            lr=1e-4,
            layer_decay=0.7,
            drop_path=0.1,
            fp32_fallback=False,
            num_train_images=118287,
            num_val_images=5000,
            num_categories=80,
            nan_metrics=[],
            log_file="/w/log",
            dets_out=None,
        ),
    )


def seg_row(init, arch, seed, miou, crop=512):
    return dense_row(
        "ade20k",
        "upernet",
        init,
        arch,
        seed,
        {"mIoU": miou, "aAcc": 80.0, "mAcc": 60.0},
        {
            "img_size": crop,
            "crop_size": [crop, crop],
            "log_dir": "/w/logs",
            "log_file": "/w/log",
            "fp32_fallback": False,
        },
    )


def test_real_resolution_dense_rows_get_the_papers_numbers(tmp_path):
    store = ResultsStore(tmp_path / "runs.jsonl")
    store.append(det_row("mae", "vit_base_patch16", 0, 50.0))
    store.append(det_row("mae", "vit_base_patch16", 1, 50.6))
    store.append(det_row("supervised", "vit_base_patch16", 0, 47.5))
    store.append(det_row("mae", "vit_large_patch16", 0, 53.0))
    store.append(det_row("mae", "vit_base_patch16", 0, 30.0, img_size=224))  # not the paper's input
    store.append(seg_row("mae", "vit_base_patch16", 0, 47.9))
    store.append(seg_row("beit", "vit_large_patch16", 0, 53.0))
    store.append(seg_row("mae", "vit_demo_patch8", 0, 20.0, crop=64))  # the demo's smoke crop
    tables = build_tables(store.dataframe(), load_reference())

    coco = tables["table4_coco"]
    # He et al. 2021, Table 4: MAE ViT-B 50.3 / 44.9, ViT-L 53.3 / 47.2; supervised ViT-B 47.9
    assert coco.loc["mae", ("APbox", "ViT-B", "published")] == 50.3
    assert coco.loc["mae", ("APmask", "ViT-B", "published")] == 44.9
    assert coco.loc["mae", ("APbox", "ViT-L", "published")] == 53.3
    assert coco.loc["supervised", ("APbox", "ViT-B", "published")] == 47.9
    assert coco.loc["mae", ("APbox", "ViT-B", "mean")] == pytest.approx(50.3)
    assert coco.loc["mae", ("APbox", "ViT-B", "n")] == 2
    # a 224-px COCO run is a column of its own, without the 1024-px paper's number
    assert coco.loc["mae", ("APbox", "ViT-B224", "mean")] == 30.0
    assert math.isnan(coco.loc["mae", ("APbox", "ViT-B224", "published")])
    assert list(dict.fromkeys(coco.columns.get_level_values("column"))) == ["ViT-B", "ViT-B224", "ViT-L"]

    ade = tables["table5_ade20k"]
    # Table 5: MAE ViT-B 48.1, BEiT ViT-L 53.3
    assert ade.loc["mae", ("mIoU", "ViT-B", "published")] == 48.1
    assert ade.loc["beit", ("mIoU", "ViT-L", "published")] == 53.3
    assert ade.loc["mae", ("mIoU", "ViT-demo/8@64", "mean")] == 20.0
    assert math.isnan(ade.loc["mae", ("mIoU", "ViT-demo/8@64", "published")])

    out = tmp_path / "tables"
    run_table(store.path, out, formats=("md",), plots=False)
    md = (out / "table4_coco.md").read_text()
    assert "| APbox ViT-B (paper) |" in md and re.search(r"\| 50\.3(<sup>[a-z,]+</sup>)? \|", md)
    assert re.search(r"\| 48\.1(<sup>[a-z,]+</sup>)? \|", (out / "table5_ade20k.md").read_text())


def test_classification_rows_at_their_recorded_input_size_get_the_papers_numbers(tmp_path):
    store = ResultsStore(tmp_path / "runs.jsonl")
    for img_size, top1 in ((224, 79.0), (448, 83.0)):  # run_classification records extra.img_size
        store.append(
            row(
                "mae",
                "vit_huge_patch14",
                0,
                {"top1": top1, "top5": 95.0},
                "inat2017",
                "finetune",
                extra={"img_size": img_size, "epochs": 100},
            )
        )
    t6 = build_tables(store.dataframe(), load_reference())["table6_transfer_cls"]
    assert t6.loc["mae", ("iNat 2017", "ViT-H", "published")] == 79.3
    assert t6.loc["mae", ("iNat 2017", "ViT-H448", "published")] == 83.4


def test_every_published_number_finds_its_cell(tmp_path):
    """One result row per reference entry, at the input size the paper used: every published
    number lands beside a mean, in the table its task declares."""
    from tasks.registry import TASKS

    ref = load_reference()
    # Table 7's '<protocol>@<target>' rows are for reading: no run records such a protocol
    runnable = [p in TASKS[t].tables for t, p in zip(ref["task"], ref["protocol"])]
    assert ref[[not r for r in runnable]]["protocol"].str.contains("@").all()
    ref = ref[runnable]
    rows = {}
    for r in ref.itertuples(index=False):
        spec = TASKS[r.task]
        img_size = spec.img_size if r.img_size == 224 else r.img_size
        k = None if math.isnan(r.k) else (int(r.k) if float(r.k).is_integer() else r.k)
        key = (r.task, r.protocol, r.init, r.backbone, img_size, k)
        rows.setdefault(key, {})[r.metric] = r.value
    store = ResultsStore(tmp_path / "runs.jsonl")
    for i, ((task, protocol, init, backbone, img_size, k), metrics) in enumerate(rows.items()):
        store.append(row(init, backbone, 0, metrics, task, protocol, k=k, extra={"img_size": img_size}, run_id=f"r{i}"))
    tables = build_tables(store.dataframe(), ref)
    cells = pd.concat([table_to_long(t) for t in tables.values()])
    assert len(cells) == len(ref)
    assert (cells["published"] == cells["mean"]).all(), cells[cells["published"] != cells["mean"]]


# -- labels and checkpoints (issue 21), provenance (issue 22), floors (issue 20) ---------------


def labelled(label, seed, top1, sha=None, provenance=None, init="mae", backbone="vit_base_patch16", **kw):
    r = row(init, backbone, seed, {"top1": top1}, "inat2017", "finetune", **kw)
    extra = r["extra"]
    r.update(schema=3, label=label, checkpoint_sha256=sha, provenance=provenance)
    r["run_id"] = kw.get("run_id") or default_run_id(
        "paper", "inat2017", "finetune", None, init, backbone, seed, extra, label=label, checkpoint_sha256=sha
    )
    return r


def test_two_checkpoints_of_one_label_are_two_rows_never_seeds(tmp_path):
    store = ResultsStore(tmp_path)
    sha_a, sha_b = "a" * 8 + "1" * 56, "b" * 8 + "2" * 56
    for seed, (va, vb) in enumerate([(70.0, 50.0), (72.0, 52.0)]):
        store.append(labelled("mae", seed, va, sha=sha_a))
        store.append(labelled("mae", seed, vb, sha=sha_b))
    store.append(labelled("mae-ours", 0, 60.0, sha="c" * 64))  # another label, one checkpoint: no suffix
    t6 = build_tables(store.dataframe(), None)["table6_transfer_cls"]
    assert list(t6.index) == ["mae-ours", "mae@aaaaaaaa", "mae@bbbbbbbb"]
    cell = ("iNat 2017", "ViT-B", "mean")
    assert t6.loc["mae@aaaaaaaa", cell] == 71.0 and t6.loc["mae@bbbbbbbb", cell] == 51.0
    assert t6.loc["mae@aaaaaaaa", ("iNat 2017", "ViT-B", "n")] == 2
    assert t6.loc["mae@bbbbbbbb", ("iNat 2017", "ViT-B", "n")] == 2
    # schema-2 rows (no label) read as their init
    old = row("beit", "vit_base_patch16", 0, {"top1": 65.0}, "inat2017", "finetune")
    store.append(old)
    assert "beit" in build_tables(store.dataframe(), None)["table6_transfer_cls"].index


def _release_provenance(tmp_path, name, blob):
    """What ``bench cls`` records for an official release file (backbones.provenance)."""
    import hashlib

    import torch

    from backbones.provenance import provenance_of

    path = tmp_path / name
    torch.save(blob, path)
    return provenance_of(path, hashlib.sha256(path.read_bytes()).hexdigest(), blob)


def test_only_the_papers_checkpoint_sits_unmarked_beside_a_paper_number(tmp_path):
    store = ResultsStore(tmp_path)
    huge = "vit_huge_patch14"  # Table 6 has MAE ViT-H iNat 2017: 79.3
    mae = _release_provenance(
        tmp_path, "mae_pretrain_vit_huge.pth", {"model": {"cls_token": 0, "blocks.0.attn.qkv.weight": 0}}
    )
    beit22k = _release_provenance(tmp_path, "beit_large_patch16_224_pt22k.pth", {"model": {"cls_token": 0}})
    assert mae["official"] and beit22k["data"] == "ImageNet-22K"
    ours = {
        "source": "self-pretrained",
        "verified": "its own run record",
        "method": "mae",
        "data": "digits",
        "steps": 100,
    }
    deit = {"source": "facebookresearch/deit", "official": True, "init": "supervised", "data": "ImageNet-1K"}
    deit.update(epochs=300, target="labels (DeiT recipe)")
    store.append(labelled("mae", 0, 79.0, sha="1" * 64, provenance=mae, backbone=huge))
    store.append(labelled("mae-ours", 0, 70.0, sha="2" * 64, provenance=ours, backbone=huge))
    store.append(labelled("mae-unknown", 0, 75.0, sha="3" * 64, backbone=huge))
    store.append(labelled("mae-noprov", 0, 76.0, backbone=huge))
    store.append(labelled("beit", 0, 77.0, sha="4" * 64, provenance=beit22k, init="beit", backbone=huge))
    store.append(labelled("supervised", 0, 74.0, sha="5" * 64, provenance=deit, init="supervised", backbone=huge))
    reference = load_reference().copy()
    extra = reference[(reference["task"] == "inat2017") & (reference["backbone"] == huge)].iloc[[0]].copy()
    extra = pd.concat([extra, extra], ignore_index=True)
    extra[["init", "value", "note"]] = [["beit", 70.0, ""], ["supervised", 71.0, ""]]  # numbers to sit beside
    t6 = build_tables(store.dataframe(), pd.concat([reference, extra], ignore_index=True))["table6_transfer_cls"]
    info = t6.attrs["info"]
    key = ("iNat 2017", "ViT-H")
    assert all(t6.loc[label, key + ("published",)] == 79.3 for label in ("mae", "mae-ours", "mae-unknown"))
    assert info[("mae",) + key]["paper_match"] is True
    notes = {text: mark for text, mark in t6.attrs["footnotes"].items()}
    expected = {
        "mae-ours": "MAE ViT-H: self-pretrained (100 steps on digits), not the paper's checkpoint",
        "mae-unknown": "MAE ViT-H: checkpoint of unknown provenance",
        "mae-noprov": "MAE ViT-H: checkpoint of unknown provenance",
        "beit": "BEiT ViT-H: data ImageNet-22K (paper: ImageNet-1K); epochs 150 (paper: 800)",
        "supervised": "supervised ViT-H: facebookresearch/deit weights, paper: its own supervised recipe (A.2)",
    }
    for label, text in expected.items():
        assert info[(label,) + key]["paper_match"] is False
        assert notes[text] in info[(label,) + key]["marks"]
    # every row beside a paper number is either the paper's checkpoint or marked (Markdown and CSV)
    long = table_to_long(t6)
    beside = long[long["published"].notna()]
    assert set(beside[beside["paper_match"]]["init"]) == {"mae"}
    assert all(n for n in beside[~beside["paper_match"].astype(bool)]["notes"])
    assert not set(info[("mae",) + key]["marks"]) & {notes[text] for text in expected.values()}
    md = to_markdown(t6)
    mark = notes[expected["mae-ours"]]
    assert re.search(rf"\| mae-ours \| 70\.0<sup>([a-z]+,)*{mark}(,[a-z]+)*</sup> \|", md)


def test_raw_pixel_floors_are_rows_of_their_own_below_the_inits(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(labelled("random", 0, 40.0, init="random", backbone="vit_demo_patch8"))
    store.append(labelled("mae", 0, 60.0, backbone="vit_demo_patch8"))
    for protocol, value in (("logreg", 89.0), ("knn", 91.5)):
        r = row("raw_pixels", "raw_pixels", 0, {"top1": value}, "inat2017", protocol)
        store.append(r)
    store.append(row("raw_pixels", "raw_pixels", 0, {"top1": 30.0}, "inat2018", "knn"))  # no learned row: no floor
    # named by protocol, whatever the row's label or title (tasks/classification/floors.py sets both)
    titled = labelled("raw-pixels-ridge", 1, 80.0, init="raw_pixels", backbone="raw_pixels")
    titled.update(protocol="ridge", run_id="ridge")
    titled["extra"]["title"] = "raw pixels, ridge regression"
    store.append(titled)
    tables = build_tables(store.dataframe(), None)
    t6 = tables["table6_transfer_cls"]
    floors = ["raw pixels (k-NN)", "raw pixels (logistic regression)", "raw pixels (ridge)"]
    assert list(t6.index) == ["random", "mae", *floors]
    assert t6.attrs["floors"] == floors
    assert t6.loc["raw pixels (k-NN)", ("iNat 2017", "ViT-demo/8", "mean")] == 91.5
    assert "iNat 2018" not in t6.columns.get_level_values("group")
    # floors take no part in 'best': mae vs random is the only comparison
    assert [(g, c) for g, c, _, _ in t6.attrs["tests"]] == [("iNat 2017", "ViT-demo/8")]
    md = to_markdown(t6)
    lines = md.splitlines()
    heading = lines.index("| *Floors: raw pixels, no backbone* | |")
    assert lines[heading - 1].startswith("| mae |") and lines[heading + 1].startswith("| raw pixels (k-NN) | 91.5")
    tex = to_latex(t6)
    assert r"\multicolumn{2}{l}{\emph{Floors: raw pixels, no backbone}} \\" in tex
    assert set(table_to_long(t6)["block"]) == {"init", "floor"}
    assert "linear_probe" not in tables  # floors alone make no table


def test_a_repeated_seed_counts_once_never_as_another_seed(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(labelled("mae", 0, 70.0, sha="a" * 64, run_id="first"))
    store.append(labelled("mae", 0, 74.0, sha="a" * 64, run_id="rerun"))  # other settings, same seed
    store.append(labelled("mae", 1, 72.0, sha="a" * 64, run_id="seed1"))
    t6 = build_tables(store.dataframe(), None)["table6_transfer_cls"]
    assert t6.loc["mae", ("iNat 2017", "ViT-B", "n")] == 2
    assert t6.loc["mae", ("iNat 2017", "ViT-B", "mean")] == 73.0  # (74 + 72) / 2
    assert "several runs of seed 0 (same label and checkpoint): the last recorded counts" in to_markdown(t6)
