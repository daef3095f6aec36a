"""Image transforms: MAE's pretraining augmentation, and torchvision / timm PIL pipelines run on
(3, H, W) uint8 tensors with ``torchvision.transforms.v2`` kernels where every step has an exact v2
counterpart (``as_tensor_transform``)."""

from __future__ import annotations

import torch
from torchvision import transforms as T
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def wants_tensor(transform) -> bool:
    """Whether ``transform`` takes (3, H, W) uint8 tensors (then readers decode with ``decode_rgb``)."""
    return bool(getattr(transform, "tensor_input", False))


def _v2_equivalent(steps):
    """(v2 geometric transforms, mean, std) doing on uint8 tensors what the torchvision v1 /
    timm ``steps`` do on PIL images -- crop / resize / flip, then to-tensor, then normalise -- or
    None when a step has no exact v2 counterpart (RandAugment, timm's random interpolation, ...)."""
    tensor_modes = (
        T.InterpolationMode.NEAREST,
        T.InterpolationMode.NEAREST_EXACT,
        T.InterpolationMode.BILINEAR,
        T.InterpolationMode.BICUBIC,
    )
    geometric, mean, std, to_tensor = [], None, None, False
    for t in steps:
        name = type(t).__name__
        if not to_tensor and type(t) is T.RandomResizedCrop and t.interpolation in tensor_modes:
            geometric.append(
                v2.RandomResizedCrop(
                    t.size, scale=t.scale, ratio=t.ratio, interpolation=t.interpolation, antialias=True
                )
            )
        elif not to_tensor and type(t) is T.Resize and t.interpolation in tensor_modes:
            geometric.append(v2.Resize(t.size, interpolation=t.interpolation, max_size=t.max_size, antialias=True))
        elif not to_tensor and type(t) is T.CenterCrop:
            geometric.append(v2.CenterCrop(t.size))
        elif not to_tensor and type(t) is T.RandomHorizontalFlip:
            geometric.append(v2.RandomHorizontalFlip(t.p))
        elif not to_tensor and (type(t) is T.ToTensor or name == "MaybeToTensor"):
            to_tensor = True
        elif to_tensor and mean is None and type(t) is T.Normalize:
            mean, std = t.mean, t.std
        else:
            return None
    if not to_tensor:
        return None
    return v2.Compose(geometric), mean, std


class TensorTransform:
    """A PIL pipeline (``reference``: torchvision / timm crop, resize, flip, to-tensor, normalise)
    that also runs on (3, H, W) uint8 tensors with ``torchvision.transforms.v2`` kernels (antialiased
    uint8 resize). A PIL image goes through ``reference`` unchanged. The
    v2 transforms draw the same random numbers from torch's RNG as the v1 ones, so one seed gives the
    same crop box and flip on either path; pixels differ only by the resize kernels' rounding."""

    tensor_input = True

    def __init__(self, reference, tensor_ops, mean=None, std=None):
        self.reference, self.tensor_ops = reference, tensor_ops
        self.transforms = getattr(reference, "transforms", [reference])
        self.scale = self.shift = None
        if mean is not None:  # (x / 255 - mean) / std as one multiply-add on the uint8 values
            std_t = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
            self.scale = 1.0 / (255.0 * std_t)
            self.shift = -torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1) / std_t

    def __call__(self, img):
        if not isinstance(img, torch.Tensor):
            return self.reference(img)
        if img.dtype != torch.uint8 or img.ndim != 3:
            raise TypeError(f"TensorTransform takes (3, H, W) uint8 image tensors, got {img.dtype} {tuple(img.shape)}")
        x = self.tensor_ops(img).to(torch.float32, memory_format=torch.contiguous_format)
        if self.scale is None:
            return x.div_(255.0)
        return x.mul_(self.scale).add_(self.shift)

    def __repr__(self):
        return f"TensorTransform(tensor: {self.tensor_ops}, PIL: {self.reference})"


def as_tensor_transform(reference):
    """``reference`` wrapped in a ``TensorTransform`` when all its steps have v2 counterparts,
    else ``reference`` itself (readers then hand it PIL images)."""
    found = _v2_equivalent(getattr(reference, "transforms", [reference]))
    return reference if found is None else TensorTransform(reference, *found)


def pretrain_transform(img_size: int, scale=(0.2, 1.0), tensor: bool = True):
    """MAE's pretraining augmentation: RandomResizedCrop(scale 0.2-1, bicubic) + flip + normalise.
    ``tensor=True``: a ``TensorTransform`` (uint8 tensors through v2, PIL images through the v1
    pipeline); ``tensor=False``: the plain v1 PIL pipeline."""
    reference = T.Compose(
        [
            T.RandomResizedCrop(img_size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return as_tensor_transform(reference) if tensor else reference
