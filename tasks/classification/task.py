"""Classification transfer (He et al. 2021, Table 6, Table 12 and Fig. 9), declared once per
dataset of ``tasks.classification.datasets.DATASETS``, plus ImageNet-1K, which only has published
numbers here (Table 3; no reader or generator, so suites cannot run it)."""

from __future__ import annotations

from tasks.classification.config import PROTOCOLS
from tasks.classification.formats import DATASETS
from tasks.spec import Command, Table, TaskSpec, TransferRun

TABLE3 = Table("table3_imagenet", "ImageNet-1K end-to-end fine-tuning, top-1 (cf. MAE Table 3)")
TABLE6 = Table("table6_transfer_cls", "Classification transfer, fine-tuned top-1 (cf. MAE Table 6)", layout="tasks")
LINEAR = Table("linear_probe", "Linear probing, top-1 (cf. MAE Table 12)", layout="tasks")
PARTIAL = Table(
    "partial_finetune", "Partial fine-tuning, top-1 vs. number of tuned blocks k (cf. MAE Fig. 9)", layout="k"
)

TITLES = {
    "inat2017": "iNat 2017",
    "inat2018": "iNat 2018",
    "inat2019": "iNat 2019",
    "places205": "Places205",
    "places365": "Places365",
    "digits": "Digits",
}
GENERATORS = {
    "places205": "make_places205_dataset",
    "places365": "make_places365_dataset",
    "folder": "make_image_folder",
    "digits": "make_digits_dataset",
}
# What a suite's search may vary: protocol-config keys (TransferRun.overrides)
SEARCH_KEYS = ("lr", "blr", "weight_decay", "drop_path", "layer_decay", "epochs", "warmup_epochs")
# Input size of a task's own protocol: the paper's 224 px, except the sklearn digits (64 px images).
IMG_SIZE = {"digits": 64}
# The deviation a generated set means: drawn images, except the digits, which are real scans.
GENERATED = {"digits": "scikit-learn digits (real 8x8 scans, upscaled), not the paper's data"}
CLS = Command(
    "cls",
    "iNat / Places / folder classification: fine-tune, linear probe, partial",
    "tasks.classification.cli:add_cls_arguments",
    "tasks.classification.cli:cls_main",
)


def run_cls(r: TransferRun) -> dict:
    from tasks.classification.run import run_classification  # imports torch: keep the registry cheap

    return run_classification(r)


def reader(dataset: str):
    def read(root):
        from tasks.classification.datasets import read_splits

        return read_splits(dataset, root)

    return read


def declare(dataset: str) -> TaskSpec:
    if dataset.startswith("inat"):
        generator, fixed = "make_inat_dataset", {"year": int(dataset[len("inat") :])}
    else:
        generator, fixed = GENERATORS[dataset], {}
    return TaskSpec(
        name=dataset,
        family="classification",
        title=TITLES.get(dataset, dataset),
        protocols=PROTOCOLS,
        img_size=IMG_SIZE.get(dataset, 224),
        metrics=("top1", "top5"),
        tables={"finetune": TABLE6, "linear": LINEAR, "partial": PARTIAL},
        run=run_cls,
        generator=f"tasks.classification.generate:{generator}",
        generator_args=fixed,
        reader=reader(dataset),
        suite_keys=("epochs", "batch_size", "k", "eval_every"),
        search_keys=SEARCH_KEYS,
        heldout=True,
        command=CLS,
        generated=GENERATED.get(dataset, "generated data"),
    )


IMAGENET = TaskSpec(
    name="imagenet",
    family="classification",
    title="ImageNet",
    protocols=PROTOCOLS,
    img_size=224,
    metrics=("top1", "top5"),
    tables={"finetune": TABLE3, "linear": LINEAR, "partial": PARTIAL},
)

TASKS = (IMAGENET, *(declare(dataset) for dataset in DATASETS))
