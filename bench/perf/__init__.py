"""``bench perf``: training-step speed against FLOPs and the hardware's matmul peak.

One module per measurement: ``pretrain`` (MAE step vs mask-token encoder; fine-tuning step vs
timm), ``dense`` (UperNet; the dense timing shared with ``detection``, Mask R-CNN on both
engines), ``data`` (the input pipeline); ``timing`` holds the device timers and peaks; ``cli`` the
options. Every name below stays importable as ``from bench.perf import X``.
"""

from .cli import add_perf_arguments, check_perf_options, perf_main
from .data import MODEL_IMG_S_CPU, perf_data
from .dense import build_dense_model, dense_loss, dense_peaks, mmcv_ops_fp32_on_cpu, perf_seg, time_dense
from .detection import DET_ENGINES, perf_det, random_det_samples
from .pretrain import MaskTokenEncoderMAE, perf_cls, perf_pretrain
from .timing import DeviceTimer, matmul_peak, median_step_time, step_flops, step_times, time_steps

__all__ = [
    "DET_ENGINES",
    "MODEL_IMG_S_CPU",
    "DeviceTimer",
    "MaskTokenEncoderMAE",
    "add_perf_arguments",
    "build_dense_model",
    "check_perf_options",
    "dense_loss",
    "dense_peaks",
    "matmul_peak",
    "median_step_time",
    "mmcv_ops_fp32_on_cpu",
    "perf_cls",
    "perf_data",
    "perf_det",
    "perf_main",
    "perf_pretrain",
    "perf_seg",
    "random_det_samples",
    "step_flops",
    "step_times",
    "time_dense",
    "time_steps",
]
