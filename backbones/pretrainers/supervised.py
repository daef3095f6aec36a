"""Supervised pretraining of our ViT: the "supervised" initialisation of the MAE paper's transfer
comparison, trained here at CPU scale (DeiT recipe, scaled down).

Data, one of:

* ``data='embedded'`` (default): ``EmbeddedLabelled``, random crops of the 19 real photographs
  bundled with scikit-image / scikit-learn (``bench.core.data.embedded_photos``), each crop labelled by
  the photo it was cut from (19 classes). Chosen over upsampled sklearn digits because the crops
  are natural-image statistics, the same images the other pretrainers see, so the comparison
  differs only in the objective. It is a proxy task: recognising which photo a crop comes from.
* ``data='digits'``: the pretraining split of scikit-learn's handwritten digits with their labels
  (``bench.core.data.Digits``; the labelled and eval splits are disjoint from it).
* a folder: ``root/<class>/*.jpg`` (``torchvision.datasets.ImageFolder`` layout; ``root/train``
  is used when it exists), classes = sorted sub-folders.

Recipe: the MAE paper's from-scratch supervised ViT (He et al. 2021, appendix A.2, Table 11:
AdamW betas (0.9, 0.95), blr 1e-4, wd 0.3, batch 4096, 300 epochs for ViT-B, 20 warmup, label
smoothing 0.1, mixup 0.8, cutmix 1.0, RandAugment (9, 0.5), drop path 0.1, EMA 0.9999), itself a
stronger-regularised DeiT recipe (facebookresearch/deit ``main.py``: lr 5e-4 x batch/512, wd 0.05,
the same smoothing / mixup / cutmix). Scaled down for the CPU demo: model, data, epochs; mixup /
cutmix are available (``mixup``, ``cutmix``, timm ``Mixup`` + soft-target cross-entropy) but off by
default at demo scale (a few hundred steps are too few for them to pay off); RandAugment, random
erasing and the weight EMA are not used. The crop is DeiT's RandomResizedCrop(0.08-1) + flip.

Output: ``<out>/pretrain.pth`` (classifier ``head.*`` included, dropped on load) for
``build_backbone('supervised_<arch>', checkpoint=...)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backbones.vit import Block, VisionTransformer
from bench.core.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SKIMAGE_COLOR,
    SKIMAGE_GRAY,
    Digits,
    LabelledImages,
    as_tensor_transform,
    embedded_photos,
    read_class_folders,
    wants_tensor,
)
from bench.core.determinism import seed_everything
from bench.core.engine import TrainConfig, fit
from bench.core.errors import BenchError, DataError

from .common import EXPORT, encoder_config, export_backbone, input_size

# MAE paper appendix A.2 / Table 11 (supervised ViT-B from scratch)
PAPER = dict(
    blr=1e-4,
    weight_decay=0.3,
    betas=(0.9, 0.95),
    epochs=300,
    warmup_epochs=20,
    batch_size=4096,
    smoothing=0.1,
    mixup=0.8,
    cutmix=1.0,
    drop_path_rate=0.1,
    crop_min=0.08,
)


def embedded_class_names() -> list[str]:
    return list(SKIMAGE_COLOR + SKIMAGE_GRAY + ("china", "flower"))  # sklearn load_sample_images order


class EmbeddedLabelled:
    """``length`` random crops per epoch of the bundled photos; crop ``i`` comes from photo
    ``i % 19`` and has that label (so every epoch is class-balanced). The photos are kept as uint8
    tensors when ``transform`` takes them (``bench.core.data.wants_tensor``), else as PIL images."""

    def __init__(self, transform, length: int = 1024):
        if wants_tensor(transform):
            self.images = [torch.from_numpy(np.array(a)).permute(2, 0, 1) for a in embedded_photos()]
        else:
            from PIL import Image

            self.images = [Image.fromarray(np.ascontiguousarray(a)) for a in embedded_photos()]
        self.classes = embedded_class_names()
        assert len(self.classes) == len(self.images)
        self.transform, self.length = transform, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        k = i % len(self.images)
        return self.transform(self.images[k]), k


def image_folder(root: str | Path, transform):
    """The ImageFolder layout ``root/<class>/<image>`` (``root/train`` if present) as a labelled
    dataset (``bench.core.data.read_class_folders`` + ``LabelledImages``: the readers of every task),
    with one-line DataErrors."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    if (root / "train").is_dir():
        root = root / "train"
    classes, samples = read_class_folders(root)
    if len(classes) < 2:
        raise DataError(
            f"image folder {root} has {len(classes)} class folder(s); supervised pretraining needs at least 2"
        )
    return LabelledImages(samples, classes, transform)


def supervised_transform(img_size: int, crop_min: float = 0.08):
    """DeiT's crop + flip (+ normalise): RandomResizedCrop(crop_min-1, bicubic), horizontal flip.
    A ``TensorTransform``: uint8 tensors go through the ``transforms.v2`` twins (the same crop box
    and flip for the same seed), PIL images through this v1 pipeline."""
    from torchvision import transforms as T

    return as_tensor_transform(
        T.Compose(
            [
                T.RandomResizedCrop(img_size, scale=(crop_min, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
    )


def labelled_dataset(data: str | None, tf, epoch_size: int):
    """The labelled pretraining images: embedded photos, the digits' pretraining split with its labels
    (the labelled/eval splits stay unseen) or an image folder with class subfolders."""
    if data in ("embedded", "", None):
        return EmbeddedLabelled(tf, epoch_size)
    if data == "digits":
        return Digits("pretrain", tf, labels=True)
    return image_folder(data, tf)


def make_mixup(mixup: float, cutmix: float, smoothing: float, num_classes: int, batch_size: int):
    """timm's ``Mixup`` (soft targets with label smoothing) when either is on, else None."""
    if not (mixup > 0 or cutmix > 0):
        return None
    from timm.data import Mixup

    if batch_size % 2:
        raise BenchError("mixup/cutmix need an even --batch-size")
    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing, num_classes=num_classes)


def pretrain_supervised(
    arch: str,
    out_dir: str | Path,
    *,
    data: str = "embedded",
    img_size: int | None = None,
    epoch_size: int = 1024,
    resume: bool = True,
    num_classes: int | None = None,
    smoothing: float = 0.1,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    crop_min: float = 0.08,
    drop_path_rate: float = 0.0,
    **train,
) -> Path:
    """Supervised classification pretraining on ``fit``; returns ``<out>/pretrain.pth``.
    ``num_classes`` defaults to the dataset's; given, it must match."""
    cfg_enc = encoder_config("supervised", arch, img_size)
    dataset = labelled_dataset(data, supervised_transform(input_size(cfg_enc), crop_min), epoch_size)
    classes = list(dataset.classes)
    if num_classes is not None and num_classes != len(classes):
        raise BenchError(f"--num-classes {num_classes} but the dataset {data} has {len(classes)} classes")
    K = len(classes)
    seed_everything(train.get("seed", 0))  # initial weights follow from the seed
    model = VisionTransformer(**{**cfg_enc, "num_classes": K, "global_pool": "token", "drop_path_rate": drop_path_rate})
    model.arch = dict(cfg_enc)
    mix = make_mixup(mixup, cutmix, smoothing, K, train.get("batch_size", TrainConfig.batch_size))
    for k in ("betas", "weight_decay"):
        train.setdefault(k, PAPER[k])
    cfg = TrainConfig(out_dir=str(out_dir), desc=f"supervised {arch}", **train)

    def loss_fn(m, batch):
        imgs, labels = batch
        if mix is not None:
            imgs, soft = mix(imgs, labels)
            logits = m(imgs)
            loss = torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()  # SoftTargetCrossEntropy
        else:
            logits = m(imgs)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
        acc = (logits.argmax(-1) == labels).float().mean()
        return loss, {"acc": acc.detach()}

    fit(
        model,
        dataset,
        loss_fn,
        cfg,
        resume=resume,
        writes=(EXPORT,),  # --no-resume moves an earlier run's export aside too
        block_type=Block,
        settings={
            "method": "supervised",
            "arch": arch,
            "data": data,
            "classes": classes,
            "smoothing": smoothing,
            "mixup": mixup,
            "cutmix": cutmix,
            "crop_min": crop_min,
            "drop_path_rate": drop_path_rate,
        },
    )
    return export_backbone(
        model,
        out_dir,
        "supervised",
        extra={"classes": classes, "method": dict(smoothing=smoothing, mixup=mixup, cutmix=cutmix)},
    )
