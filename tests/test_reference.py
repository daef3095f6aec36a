"""The published reference numbers (results/reference/): every row loads, Table 7 and Table 6's
'prev best' are there, and the values agree with the statements the paper makes about them in its
text (He et al. 2021, arXiv 2111.06377; each quoted below)."""

from __future__ import annotations

import csv

import pytest

from bench.tables import DEFAULT_REFERENCE, REFERENCE_COLUMNS, load_reference

PREV_BEST = DEFAULT_REFERENCE.with_name("mae_paper_prev_best.csv")
KEY = ["task", "protocol", "metric", "init", "backbone", "img_size", "k"]
T7_TARGETS = ("pixel_nonorm", "pixel_norm", "dvae_token")
# Table 7 columns, in the paper's order
T7_CELLS = [
    ("imagenet", "finetune", "top1", "vit_base_patch16"),
    ("imagenet", "finetune", "top1", "vit_large_patch16"),
    ("imagenet", "finetune", "top1", "vit_huge_patch14"),
    ("coco", "maskrcnn_fpn", "APbox", "vit_base_patch16"),
    ("coco", "maskrcnn_fpn", "APbox", "vit_large_patch16"),
    ("ade20k", "upernet", "mIoU", "vit_base_patch16"),
    ("ade20k", "upernet", "mIoU", "vit_large_patch16"),
]


@pytest.fixture(scope="module")
def ref():
    return load_reference(DEFAULT_REFERENCE)


def value(ref, task, protocol, metric, init, backbone, img_size=224, k=None):
    sel = ref[
        (ref.task == task)
        & (ref.protocol == protocol)
        & (ref.metric == metric)
        & (ref.init == init)
        & (ref.backbone == backbone)
        & (ref.img_size == img_size)
    ]
    sel = sel[sel.k.isna()] if k is None else sel[sel.k == k]
    assert len(sel) == 1, (task, protocol, metric, init, backbone, img_size, k, len(sel))
    return float(sel.value.iloc[0])


@pytest.mark.parametrize("path", [DEFAULT_REFERENCE, PREV_BEST], ids=lambda p: p.name)
def test_every_row_loads_with_a_source_and_a_note(path):
    ref = load_reference(path)
    assert list(ref.columns) == [*REFERENCE_COLUMNS, "note"]  # the note is printed as a footnote
    with open(path, newline="") as f:
        raw = list(csv.DictReader(f))
    assert len(raw) == len(ref) > 0
    assert list(raw[0]) == [*REFERENCE_COLUMNS, "note"]
    assert all(r["source"].startswith("He et al. 2021, ") for r in raw)
    assert all(r["note"].strip() for r in raw)
    assert ((ref.value > 0) & (ref.value < 100)).all()
    assert not ref[KEY].astype(str).duplicated().any()


def test_table7_rows_and_their_delta_row(ref):
    t7 = {
        t: [value(ref, task, f"{proto}@{t}", metric, "mae", bb) for task, proto, metric, bb in T7_CELLS]
        for t in T7_TARGETS
    }
    assert len(ref[ref.protocol.str.contains("@")]) == len(T7_TARGETS) * len(T7_CELLS)
    # Table 7's last row: "Δ is the difference between using dVAE tokens and using normalized pixels"
    delta = [round(a - b, 1) for a, b in zip(t7["dvae_token"], t7["pixel_norm"])]
    assert delta == [0.0, -0.2, 0.0, 0.0, -0.1, 0.0, -0.2]
    # §5: "While using dVAE tokens is better than using unnormalized pixels, ..."
    assert all(d > p for d, p in zip(t7["dvae_token"], t7["pixel_nonorm"]))
    # the normalized-pixel MAE is the model of Tables 3-5: same numbers as the main 'mae' rows
    assert t7["pixel_norm"] == [value(ref, task, proto, metric, "mae", bb) for task, proto, metric, bb in T7_CELLS]


def test_values_the_text_states(ref):
    v = lambda *a, **kw: value(ref, *a, **kw)  # noqa: E731
    # §4.2: "We obtain 86.9% accuracy using ViT-H (224 size). By fine-tuning with a 448 size, we achieve 87.8%"
    assert v("imagenet", "finetune", "top1", "mae", "vit_huge_patch14") == 86.9
    assert v("imagenet", "finetune", "top1", "mae", "vit_huge_patch14", img_size=448) == 87.8
    # A.2: "The accuracy is 82.6% for ViT-L ..., and 83.1% for ViT-H"; "our recipe for ViT-B has 82.3%"
    assert [
        v("imagenet", "finetune", "top1", "random", f"vit_{a}")
        for a in ("base_patch16", "large_patch16", "huge_patch14")
    ] == [82.3, 82.6, 83.1]
    # footnote 2: "BEiT with ViT-L: it produces 85.2% (tokens)"
    assert v("imagenet", "finetune", "top1", "beit", "vit_large_patch16") == 85.2
    # §5: "our MAE is 2.4 points higher than supervised pre-training (50.3 vs. 47.9, APbox)";
    # "with the larger ViT-L, ... by 4.0 points (53.3 vs. 49.3)"
    for bb, mae, sup in (("vit_base_patch16", 50.3, 47.9), ("vit_large_patch16", 53.3, 49.3)):
        assert (
            v("coco", "maskrcnn_fpn", "APbox", "mae", bb),
            v("coco", "maskrcnn_fpn", "APbox", "supervised", bb),
        ) == (mae, sup)
    # §5: "The pixel-based MAE is better than or on par with the token-based BEiT" (COCO) and
    # "MoCo v3 is on par with supervised pre-training"
    for metric in ("APbox", "APmask"):
        for bb in ("vit_base_patch16", "vit_large_patch16"):
            assert v("coco", "maskrcnn_fpn", metric, "mae", bb) >= v("coco", "maskrcnn_fpn", metric, "beit", bb)
            assert (
                abs(
                    v("coco", "maskrcnn_fpn", metric, "mocov3", bb)
                    - v("coco", "maskrcnn_fpn", metric, "supervised", bb)
                )
                <= 0.2
            )
    # §5: ADE20K "improves results over supervised pre-training, e.g., by 3.7 points for ViT-L";
    # "Our pixel-based MAE also outperforms the token-based BEiT"
    assert (
        round(
            v("ade20k", "upernet", "mIoU", "mae", "vit_large_patch16")
            - v("ade20k", "upernet", "mIoU", "supervised", "vit_large_patch16"),
            1,
        )
        == 3.7
    )
    for bb in ("vit_base_patch16", "vit_large_patch16"):
        assert v("ade20k", "upernet", "mIoU", "mae", bb) > v("ade20k", "upernet", "mIoU", "beit", bb)
    # Appendix B: "Our MAE with ViT-L has 75.8% linear probing accuracy"; "MoCo v3 [9] has 77.6%"
    assert v("imagenet", "linear", "top1", "mae", "vit_large_patch16") == 75.8
    assert v("imagenet", "linear", "top1", "mocov3", "vit_large_patch16") == 77.6
    # §4.3: "fine-tuning only one Transformer block boosts the accuracy significantly from 73.5% to
    # 81.0%"; "its MLP sub-block ... 79.1%"; Table 1 default (Figure 9's setting): ft 84.9, lin 73.5
    assert [v("imagenet", "partial", "top1", "mae", "vit_large_patch16", k=k) for k in (0.0, 0.5, 1.0, 24.0)] == [
        73.5,
        79.1,
        81.0,
        84.9,
    ]


def test_partial_rows_say_they_come_from_the_800_epoch_model():
    with open(DEFAULT_REFERENCE, newline="") as f:
        partial = [r for r in csv.DictReader(f) if r["protocol"] == "partial"]
    assert len(partial) == 4
    assert all("800-epoch" in r["note"] and "Table 1" in r["note"] for r in partial)


def test_prev_best_column_of_table6(ref):
    pb = load_reference(PREV_BEST)
    assert set(pb.init) == {"prev_best"} and (pb.backbone == "").all()
    assert dict(zip(pb.task, pb.value)) == {
        "inat2017": 75.4,
        "inat2018": 81.2,
        "inat2019": 84.1,
        "places205": 66.0,
        "places365": 58.0,
    }
    # §5: "Our results surpass the previous best results by large margins" (iNat) and "On Places, our
    # MAE outperforms the previous best results": MAE's best entry (ViT-H448) beats every 'prev best'
    for task, prev in zip(pb.task, pb.value):
        best = value(ref, task, "finetune", "top1", "mae", "vit_huge_patch14", img_size=448)
        assert best > prev
