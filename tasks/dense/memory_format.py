"""Memory format of the dense models' convolutions (ViT pyramid adapter, FPN / UperNet, RPN and RoI
heads), and a guard for mmcv's RoI ops.

* ``set_memory_format(model, channels_last)``: every 4-D parameter (conv / deconv weights) in
  ``torch.channels_last`` (NHWC) or plain contiguous (NCHW) layout, and the ViT pyramid's encoder
  maps and LayerNorm2d outputs (NHWC by construction) put in the same layout. A convolution's
  output follows its input and weight layout, so every conv of the model then runs in one layout.
  Config key ``channels_last`` of the dense task configs: ``None`` (default) = on for CUDA, where
  cuDNN's reduced-precision convolutions want NHWC, off on CPU, where fp32 convolutions were
  slower channels-last (``bench perf seg|det --channels-last both``; numbers in docs/scaling.md);
  ``True`` / ``False`` force it.
* ``contiguous_roi_inputs(model)``: mmcv's ``RoIAlign`` / ``RoIPool`` kernels index their input as
  NCHW whatever its strides, so a channels-last feature map gives wrong RoI features (forward only;
  the gradient is right). The ViT's maps are NHWC-strided views of its tokens ((B, N, D) ->
  (B, D, h, w)) and convolutions keep that layout, so before this guard the FPN maps reaching
  RoIAlign were NHWC in every layout and the RoI features were scrambled. The guard makes their
  input NCHW (no copy when it already is).
``tasks.dense.mm_runner.DenseRunner`` applies both to the model it builds, before DDP wraps it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

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
