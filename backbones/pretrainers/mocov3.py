"""MoCo v3 pretraining of our ViT (Chen, Xie & He 2021, "An Empirical Study of Training
Self-Supervised Vision Transformers"), following facebookresearch/moco-v3 at small scale.

What is the official algorithm here (moco-v3 ``moco/builder.py``, ``main_moco.py``, ``vits.py``):

* a base encoder and a momentum encoder (same ViT), each with a 3-layer projection MLP as its
  ``head`` (Linear without bias + BN + ReLU, last BN without affine), a 2-layer prediction MLP on
  the base branch only (``MoCo_ViT._build_projector_and_predictor_mlps``);
* two augmented views per image; symmetric contrastive loss
  ``ctr(q1, k2) + ctr(q2, k1)``, ``ctr(q, k) = CE(normalize(q) @ normalize(k).T / tau, labels) * 2 tau``
  with the keys of the other samples of the *global* batch as negatives (tau = 0.2 for ViTs):
  under DDP the keys are all-gathered without gradient (``concat_all_gather``, here
  ``bench.core.distributed.all_gather_nograd``) and rank r's queries have labels ``arange(N) + N r``;
* SyncBatchNorm in the projector and predictor MLPs (``convert_sync_batchnorm`` of the whole model,
  momentum encoder included; ``bench.core.distributed.convert_sync_batchnorm``, which also works on
  CPU/gloo), so under DDP the BN statistics are the global batch's;
* the momentum encoder is an EMA of the base encoder (all parameters, projector included) with a
  half-cycle cosine momentum ``m = 1 - (1 - m0) (1 + cos(pi t)) / 2`` from ``m0 = 0.99`` to 1
  (``--moco-m-cos``, ``adjust_moco_momentum`` evaluated per iteration). Here the update runs in
  ``fit``'s ``after_step`` hook after optimizer step ``s`` with ``m(s / total)``; the official code
  runs it at the start of the next iteration with the same value on the same weights, so the
  sequence of momentum encoders is the same (its extra update before step 0 is a no-op: both
  encoders start equal);
* ``--stop-grad-conv1``: the random patch projection stays frozen (``vits.py``);
* a fixed 2-D sin-cos position embedding in MoCo's layout (``build_2d_sincos_position_embedding``:
  ``[sin(w), cos(w), sin(h), cos(h)]`` over ``meshgrid(grid_w, grid_h)``, which for square grids
  puts the *row* index first), not trained;
* BYOL augmentation with ``--crop-min=0.08``: RandomResizedCrop(0.08-1), ColorJitter(0.4, 0.4,
  0.2, 0.1) p=0.8, grayscale p=0.2, Gaussian blur (sigma 0.1-2) p=1.0 / 0.1, solarize p=0 / 0.2,
  flip (view 1 / view 2).

Paper / official recipe for ViT-S/B (moco-v3 CONFIG.md): AdamW, lr 1.5e-4 x batch/256 (blr), wd
0.1, batch 4096, 300 epochs, 40 warmup epochs, tau 0.2, m0 0.99 cosine, projector/predictor
hidden 4096, output 256. What is scaled down for the CPU demo: the MLP widths (``mlp_dim``,
``dim``), the batch, the epochs; the blur sigma is scaled with the image size (the official sigma
is for 224 px). With the gathered keys and synchronised BN, N processes with per-process batch B
follow the loss trajectory of one process with batch N B (tested with 2 gloo processes in
``tests/test_distributed_pretrain.py``).

Output: ``<out>/pretrain.pth`` with the base encoder (``head.*`` = projector, dropped on load) for
``build_backbone('mocov3_<arch>', checkpoint=...)``.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from backbones.vit import Block, VisionTransformer
from bench.core.data import IMAGENET_MEAN, IMAGENET_STD, TensorTransform, wants_tensor
from bench.core.determinism import seed_everything
from bench.core.distributed import all_gather_nograd, convert_sync_batchnorm, rank_world
from bench.core.engine import TrainConfig, fit, unwrap
from bench.core.errors import BenchError

from .common import EXPORT, encoder_config, export_backbone, image_dataset, input_size

# facebookresearch/moco-v3 CONFIG.md (ViT-S / ViT-B, 300 epochs)
PAPER = dict(
    optimizer="adamw",
    blr=1.5e-4,
    weight_decay=0.1,
    betas=(0.9, 0.999),
    batch_size=4096,
    epochs=300,
    warmup_epochs=40,
    temperature=0.2,
    m0=0.99,
    dim=256,
    mlp_dim=4096,
    crop_min=0.08,
)


def build_mlp(num_layers: int, input_dim: int, mlp_dim: int, output_dim: int, last_bn: bool = True) -> nn.Sequential:
    """moco-v3 ``_build_mlp``: Linear(bias=False) + BN + ReLU between layers; the last Linear is
    followed by a BN without affine parameters (ViT projector and predictor both use it)."""
    layers = []
    for i in range(num_layers):
        d1 = input_dim if i == 0 else mlp_dim
        d2 = output_dim if i == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(d1, d2, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d2), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d2, affine=False))
    return nn.Sequential(*layers)


def mocov3_sincos_pos_embed(embed_dim: int, grid, temperature: float = 10000.0) -> torch.Tensor:
    """(1, 1 + h*w, D): moco-v3 ``vits.py`` ``build_2d_sincos_position_embedding`` (cls slot zero)."""
    h, w = grid
    grid_w, grid_h = torch.meshgrid(
        torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32), indexing="ij"
    )
    assert embed_dim % 4 == 0, "2-D sin-cos position embedding needs embed_dim divisible by 4"
    pos_dim = embed_dim // 4
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim)
    out_w = grid_w.flatten()[:, None] * omega[None]
    out_h = grid_h.flatten()[:, None] * omega[None]
    pe = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]
    return torch.cat([torch.zeros(1, 1, embed_dim), pe], dim=1)


def momentum_at(progress: float, m0: float = 0.99) -> float:
    """Half-cycle cosine from ``m0`` (progress 0) to 1 (progress 1): moco-v3 ``adjust_moco_momentum``."""
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - m0)


class MoCoV3(nn.Module):
    """Base + momentum ViT encoders with projector heads, and the predictor."""

    def __init__(
        self, encoder_cfg: dict, dim: int = 256, mlp_dim: int = 4096, T: float = 0.2, stop_grad_conv1: bool = True
    ):
        super().__init__()
        self.T = T
        self.arch = dict(encoder_cfg)
        self.base_encoder = self._encoder(encoder_cfg, stop_grad_conv1)
        self.momentum_encoder = self._encoder(encoder_cfg, stop_grad_conv1)
        hidden = self.base_encoder.embed_dim
        self.base_encoder.head = build_mlp(3, hidden, mlp_dim, dim)
        self.momentum_encoder.head = build_mlp(3, hidden, mlp_dim, dim)
        self.predictor = build_mlp(2, dim, mlp_dim, dim)
        for pb, pm in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            pm.data.copy_(pb.data)
            pm.requires_grad_(False)
        # BN buffers start equal too (they are not EMA'd: the official code updates parameters only)
        self.momentum_encoder.load_state_dict(self.base_encoder.state_dict())

    @staticmethod
    def _encoder(cfg: dict, stop_grad_conv1: bool) -> VisionTransformer:
        enc = VisionTransformer(**{**cfg, "num_classes": 0, "global_pool": "token"})
        enc.pos_embed.data.copy_(mocov3_sincos_pos_embed(enc.embed_dim, enc.pos_grid))
        enc.pos_embed.requires_grad_(False)
        if stop_grad_conv1:
            enc.patch_embed.proj.weight.requires_grad_(False)
            enc.patch_embed.proj.bias.requires_grad_(False)
        enc.arch = dict(cfg)
        return enc

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"base_encoder.cls_token", "base_encoder.pos_embed"}

    @torch.no_grad()
    def update_momentum_encoder(self, m: float):
        """``param_m = m * param_m + (1 - m) * param_b`` for every parameter (projector included)."""
        for pb, pm in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            pm.mul_(m).add_(pb.detach(), alpha=1.0 - m)

    def contrastive_loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """moco-v3 ``contrastive_loss``: this rank's N queries against the keys of every rank (no
        gradient through the keys); query i's positive is its own key, at ``N * rank + i``."""
        q = F.normalize(q.float(), dim=1)
        k = all_gather_nograd(F.normalize(k.float(), dim=1))
        logits = q @ k.T / self.T
        labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * rank_world()[0]
        return F.cross_entropy(logits, labels) * (2 * self.T)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        q1 = self.predictor(self.base_encoder(x1))
        q2 = self.predictor(self.base_encoder(x2))
        with torch.no_grad():
            k1 = self.momentum_encoder(x1)
            k2 = self.momentum_encoder(x2)
        return self.contrastive_loss(q1, k2) + self.contrastive_loss(q2, k1)


# --------------------------------------------------------------------------------------------------
# Augmentation (main_moco.py, BYOL recipe with --crop-min)
# --------------------------------------------------------------------------------------------------
class GaussianBlur:
    """moco-v3 ``moco/loader.py``: Gaussian blur with sigma uniform in ``sigma`` (x ``scale``), drawn
    from Python's ``random`` as there. PIL images: ``ImageFilter.GaussianBlur(radius=sigma)`` (the
    official call); uint8 tensors: torchvision's ``gaussian_blur`` with a kernel of +-3 sigma."""

    def __init__(self, sigma=(0.1, 2.0), scale: float = 1.0):
        self.sigma, self.scale = sigma, scale

    def __call__(self, img):
        s = random.uniform(*self.sigma) * self.scale
        if isinstance(img, torch.Tensor):
            from torchvision.transforms.v2 import functional as TF

            k = 2 * math.ceil(3 * s) + 1
            return TF.gaussian_blur(img, [k, k], [s, s])
        from PIL import ImageFilter

        return img.filter(ImageFilter.GaussianBlur(radius=s))


class TwoCropsTransform:
    """Two views of one image; takes uint8 tensors when both views do (``bench.core.data.wants_tensor``)."""

    def __init__(self, t1, t2):
        self.t1, self.t2 = t1, t2
        self.tensor_input = wants_tensor(t1) and wants_tensor(t2)

    def __call__(self, img):
        return self.t1(img), self.t2(img)


def mocov3_transform(img_size: int, crop_min: float = 0.08) -> TwoCropsTransform:
    """The BYOL views of ``main_moco.py``. Each view is a ``TensorTransform``: uint8 tensors go through
    the ``transforms.v2`` twins of the steps (crop and colour ops on the uint8 tensor; same random
    draws, in the same order, as the v1 steps), PIL images through the official v1 pipeline."""
    from torchvision import transforms as T
    from torchvision.transforms import v2

    blur = GaussianBlur((0.1, 2.0), scale=img_size / 224)
    bicubic = T.InterpolationMode.BICUBIC

    def view(blur_p: float, solarize_p: float):
        reference = T.Compose(
            [
                T.RandomResizedCrop(img_size, scale=(crop_min, 1.0), interpolation=bicubic),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
                T.RandomApply([blur], p=blur_p),
                T.RandomSolarize(128, p=solarize_p),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
        tensor_ops = v2.Compose(
            [
                v2.RandomResizedCrop(img_size, scale=(crop_min, 1.0), interpolation=bicubic, antialias=True),
                v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                v2.RandomGrayscale(p=0.2),
                v2.RandomApply([blur], p=blur_p),
                v2.RandomSolarize(128, p=solarize_p),
                v2.RandomHorizontalFlip(),
            ]
        )
        return TensorTransform(reference, tensor_ops, IMAGENET_MEAN, IMAGENET_STD)

    return TwoCropsTransform(view(1.0, 0.0), view(0.1, 0.2))


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------
def mocov3_loss(model, views):
    """``fit`` loss function: a batch is the pair of view batches."""
    x1, x2 = views
    return model(x1, x2), {}


def momentum_hook(model: MoCoV3, m0: float = 0.99):
    """``fit``'s ``after_step``: after optimizer step ``step`` of ``total``, EMA-update the momentum
    encoder with ``momentum_at(step / total, m0)`` (see the module docstring for the alignment with
    the official per-iteration schedule)."""

    def after_step(step: int, total: int):
        unwrap(model).update_momentum_encoder(momentum_at(step / total, m0))

    return after_step


# --------------------------------------------------------------------------------------------------
# pretrain_mocov3
# --------------------------------------------------------------------------------------------------
def pretrain_mocov3(
    arch: str,
    out_dir: str | Path,
    *,
    data: str = "embedded",
    img_size: int | None = None,
    epoch_size: int = 1024,
    resume: bool = True,
    dim: int = 256,
    mlp_dim: int = 4096,
    temperature: float = 0.2,
    m0: float = 0.99,
    stop_grad_conv1: bool = True,
    crop_min: float = 0.08,
    **train,
) -> Path:
    """Pretrain with MoCo v3 on ``fit``; return the path of the exported backbone checkpoint.
    ``train``: ``TrainConfig`` fields (batch_size, epochs/steps, blr, weight_decay, betas, ...)."""
    if not 0.0 <= m0 <= 1.0:
        raise BenchError(f"MoCo momentum m0 must be in [0, 1], got {m0}")
    if temperature <= 0:
        raise BenchError(f"MoCo temperature must be > 0, got {temperature}")
    cfg_enc = encoder_config("mocov3", arch, img_size)
    seed_everything(train.get("seed", 0))  # initial weights follow from the seed
    model = MoCoV3(cfg_enc, dim=dim, mlp_dim=mlp_dim, T=temperature, stop_grad_conv1=stop_grad_conv1)
    model = convert_sync_batchnorm(model)  # under DDP only: BN over the global batch (official moco-v3)
    dataset = image_dataset(data, mocov3_transform(input_size(cfg_enc), crop_min), epoch_size)
    train.setdefault("weight_decay", PAPER["weight_decay"])
    train.setdefault("betas", PAPER["betas"])
    cfg = TrainConfig(out_dir=str(out_dir), desc=f"mocov3 {arch}", **train)

    fit(
        model,
        dataset,
        mocov3_loss,
        cfg,
        after_step=momentum_hook(model, m0),
        resume=resume,
        writes=(EXPORT,),  # --no-resume moves an earlier run's export aside too
        settings={
            "method": "mocov3",
            "arch": arch,
            "data": data,
            "dim": dim,
            "mlp_dim": mlp_dim,
            "temperature": temperature,
            "m0": m0,
            "stop_grad_conv1": stop_grad_conv1,
            "crop_min": crop_min,
        },
        block_type=Block,
    )
    return export_backbone(
        model.base_encoder,
        out_dir,
        "mocov3",
        extra={
            "method": dict(
                dim=dim,
                mlp_dim=mlp_dim,
                temperature=temperature,
                m0=m0,
                stop_grad_conv1=stop_grad_conv1,
                crop_min=crop_min,
            )
        },
    )
