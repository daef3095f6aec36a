"""Memory format of the dense models' convolutions (ViT pyramid adapter, FPN / UperNet, RPN and RoI
heads), and a guard for mmcv's RoI ops.

* ``set_memory_format(model, channels_last)``: every 4-D parameter (conv / deconv weights) in
  ``torch.channels_last`` (NHWC) or plain contiguous (NCHW) layout, and the ViT pyramid's encoder
  maps and LayerNorm2d outputs (NHWC by construction) put in the same layout. A convolution's
  output follows its input and weight layout, so every conv of the model then runs in one layout.
  Config key ``channels_last`` of the dense task configs: ``None`` (default) = on for CUDA, where
  cuDNN's bf16/fp16 convolutions want NHWC, off on CPU; ``True`` / ``False`` force it. Measured on
  the 2-core CPU (``bench perf seg|det --channels-last both``, ViT-B, 512 px): UperNet fp32 (what
  the CPU tasks train in) 14-19 % slower channels-last, bf16 6-8 % faster; Mask R-CNN within
  +-5 % (noise) either way.
* ``contiguous_roi_inputs(model)``: mmcv's ``RoIAlign`` / ``RoIPool`` kernels index their input as
  NCHW whatever its strides, so a channels-last feature map gives wrong RoI features (forward only;
  the gradient is right). The ViT's maps are NHWC-strided views of its tokens ((B, N, D) ->
  (B, D, h, w)) and convolutions keep that layout, so before this guard the FPN maps reaching
  RoIAlign were NHWC in every layout and the RoI features were scrambled. The guard makes their
  input NCHW (no copy when it already is).
* ``DenseRunner``: mmengine's ``Runner`` applying both to the model it builds, before DDP wraps it
  (and resuming by sampler indices, ``tasks.dense.resume``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from mmengine.runner import Runner

from bench.core.errors import BenchError


def resolve_channels_last(setting, device) -> bool:
    """``setting`` None / 'auto' -> True on CUDA, False elsewhere; a bool is kept."""
    if setting is None or setting == "auto":
        return torch.device(device).type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise BenchError(f"key 'channels_last' must be true, false or null (auto: on for CUDA), got {setting!r}")


def set_memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """Put the conv weights (every 4-D parameter / buffer) and the ViT pyramid's encoder maps in
    channels-last or contiguous layout; in place (parameters keep their identity, so an optimizer
    built before still holds them). Returns ``model``."""
    from timm.layers import LayerNorm2d
    from backbones.adapters import ViTPyramid
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    for m in model.modules():
        if isinstance(m, ViTPyramid):
            m.memory_format = fmt
        elif isinstance(m, LayerNorm2d):  # (ViTDet's LN: simple pyramid, box / mask heads)
            if not hasattr(m, "_bench_memory_format"):
                m.register_forward_hook(_to_module_format)
            m._bench_memory_format = fmt
    return model


def _to_module_format(module, args, out):
    # timm's LayerNorm2d normalises x.permute(0, 2, 3, 1) and permutes back: its output is NHWC
    # whatever its input was
    fmt = module._bench_memory_format
    return None if fmt is None else out.contiguous(memory_format=fmt)


def _nchw_input(module, args):
    x = args[0]
    if x.is_contiguous():
        return None
    return (x.contiguous(),) + tuple(args[1:])


def contiguous_roi_inputs(model: nn.Module) -> int:
    """Register a forward pre-hook making the feature map given to every mmcv ``RoIAlign`` /
    ``RoIPool`` contiguous NCHW (once per module). Returns how many modules are guarded."""
    try:
        from mmcv.ops import RoIAlign, RoIPool
    except ImportError:  # mmcv without ops: no RoI layers to guard
        return 0
    n = 0
    for m in model.modules():
        if isinstance(m, (RoIAlign, RoIPool)):
            if not getattr(m, "_bench_nchw_guard", False):
                m.register_forward_pre_hook(_nchw_input)
                m._bench_nchw_guard = True
            n += 1
    return n


def prepare_dense_model(model: nn.Module, channels_last: bool) -> nn.Module:
    """``set_memory_format`` + ``contiguous_roi_inputs``."""
    contiguous_roi_inputs(model)
    return set_memory_format(model, channels_last)


class DenseRunner(Runner):
    """``Runner`` whose model gets ``prepare_dense_model`` with the config's ``channels_last``
    (None: on when mmengine picks CUDA) right after it is built, before the DDP wrapper.

    Several processes (``launcher`` not ``'none'``): the process group comes from
    ``bench.core.distributed.init_distributed`` (torchrun or Slurm variables; NCCL with CUDA, gloo
    without), so mmengine does not create its own. Without CUDA, mmengine's own set-up cannot run:
    its ``pytorch`` launcher calls ``torch.cuda.set_device``, its DDP wrapper passes
    ``device_ids=[LOCAL_RANK]``, and ``SyncBN`` layers make DDP refuse a CPU model. Here the wrapper
    gets ``device_ids=None`` and SyncBN becomes ``bench.core.distributed``'s gloo SyncBatchNorm, so CPU
    runs (and the tests) use the same code path as GPU runs."""

    @classmethod
    def from_cfg(cls, cfg):
        """mmengine's ``from_cfg`` on a copy of ``cfg`` in which a resumed run skips the batches it
        already trained on by sampler indices instead of loading them (``tasks.dense.resume``)."""
        import copy
        from tasks.dense.resume import skip_trained_batches_on_resume
        cfg = copy.deepcopy(cfg)
        skip_trained_batches_on_resume(cfg)
        return super().from_cfg(cfg)

    def setup_env(self, env_cfg):
        if self.distributed:
            from bench.core.distributed import init_distributed
            init_distributed()
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg, model):
        import torch.distributed as dist
        if self.distributed and dist.get_backend() == "gloo":
            from bench.core.distributed import convert_sync_batchnorm
            model = convert_sync_batchnorm(model)
            if model_wrapper_cfg is None:
                model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False,
                                         find_unused_parameters=self.cfg.get("find_unused_parameters", False))
        return super().wrap_model(model_wrapper_cfg, model)

    def build_model(self, model):
        from mmengine.device import get_device
        model = super().build_model(model)
        return prepare_dense_model(model, resolve_channels_last(self.cfg.get("channels_last"), get_device()))
