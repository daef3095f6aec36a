"""``bench perf det`` end to end on the tiny smoke configs; the timing primitives (device timers, the
CUDA peak size, the fp16 path, the option table); and the dense models' channels-last layout
(tasks/dense/memory_format.py): same loss and gradients as NCHW, and really NHWC inside."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = "random_vit_test_patch8"

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
]

NUM = r"([0-9.]+)"


def _parse_rows(out: str) -> list[dict]:
    """Header + timing lines of ``_time_dense`` -> one dict per timed variant."""
    rows, head = [], None
    for line in out.splitlines():
        m = re.search(rf"; {NUM} GFLOP/img \(fwd\+bwd\); matmul peak fp32 {NUM}, bf16 {NUM} GFLOP/s", line)
        if m:
            head = dict(
                title=line.split(",")[0], gflop_img=float(m[1]), peak={"fp32": float(m[2]), "bf16": float(m[3])}
            )
            continue
        m = re.match(
            rf"\s+(bf16|fp32)(?:, (NCHW|channels-last))?: {NUM} img/s, {NUM} s/step \(median of (\d+), "
            rf"{NUM}-{NUM}\), {NUM} GFLOP/s \({NUM}% of (bf16|fp32) peak\)",
            line,
        )
        if m:
            rows.append(
                dict(
                    head,
                    prec=m[1],
                    layout=m[2],
                    img_s=float(m[3]),
                    step_s=float(m[4]),
                    n=int(m[5]),
                    lo=float(m[6]),
                    hi=float(m[7]),
                    gflop_s=float(m[8]),
                    pct=float(m[9]),
                    peak_of=m[10],
                )
            )
    return rows


def test_perf_det_runs_both_variants_and_prints_consistent_numbers():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.cli",
            "perf",
            "det",
            "--config",
            "smoke",
            "--variant",
            "fpn",
            "vitdet",
            "--backbone",
            TINY,
            "--img-size",
            "64",
            "--batch-size",
            "2",
            "--iters",
            "1",
            "--threads",
            "1",
            "--baseline",
            "--engine",
            "both",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _parse_rows(r.stdout)
    # 2 variants x 2 engines x (bf16, fp32), in the task's default layout on CPU (one layout: no tag)
    assert [
        (x["title"].split()[0], re.search(r"\((?:d2:)?(\w+:smoke)", x["title"])[1], x["prec"], x["layout"])
        for x in rows
    ] == [
        (engine, f"{variant}:smoke", prec, None)
        for variant in ("fpn", "vitdet")
        for engine in ("mmdet", "detectron2")
        for prec in ("bf16", "fp32")
    ], r.stdout
    assert r.stdout.count("mmcv's RoIAlign and NMS are extension calls it does not count") == 2
    assert r.stdout.count("torchvision's RoIAlign and NMS (detectron2's ROIAlign, batched_nms) are not counted") == 2
    # one set of matmul peaks for the whole run; the closing table repeats each engine's bf16 / fp32 numbers
    assert len({(x["peak"]["fp32"], x["peak"]["bf16"]) for x in rows}) == 1
    table = re.findall(rf"  (fpn|vitdet) (bf16|fp32) +(mmdet|detectron2): {NUM} img/s, {NUM} GFLOP/img", r.stdout)
    assert [(v, p, e) for v, p, e, _, _ in table] == [
        (v, p, e) for v in ("fpn", "vitdet") for e in ("mmdet", "detectron2") for p in ("bf16", "fp32")
    ]
    for (_, _, _, img_s, gflop), x in zip(table, rows):
        assert float(img_s) == pytest.approx(x["img_s"], abs=1e-3) and float(gflop) == pytest.approx(
            x["gflop_img"], rel=1e-3
        )
    for x in rows:
        assert x["img_s"] > 0 and x["step_s"] > 0 and x["n"] == 1 and x["peak_of"] == x["prec"]
        assert 0.05 < x["gflop_img"] < 50  # a 64 px Mask R-CNN on a dim-32 ViT: about 1 GFLOP fwd+bwd
        assert x["img_s"] == pytest.approx(2 / x["step_s"], rel=0.01)  # batch 2
        assert x["lo"] <= x["step_s"] <= x["hi"]
        assert x["gflop_s"] == pytest.approx(x["gflop_img"] * x["img_s"], rel=0.05, abs=1)
        assert x["pct"] == pytest.approx(100 * x["gflop_s"] / x["peak"][x["prec"]], rel=0.05, abs=1)
        assert x["peak"]["fp32"] > 0 and x["peak"]["bf16"] > 0


def test_perf_det_compares_layouts_interleaved_and_refuses_a_bad_size(capsys):
    from bench.core.errors import BenchError
    from bench.perf import perf_det

    rows = perf_det(
        config="smoke",
        variants=("vitdet",),
        backbone=TINY,
        img_size=64,
        batch_size=1,
        boxes=3,
        iters=1,
        channels_last="both",
        repeats=2,
        engine="mmdet",
    )
    out = capsys.readouterr().out
    assert [(x["prec"], x["channels_last"], x["steps"]) for x in rows] == [("bf16", False, 2), ("bf16", True, 2)]
    parsed = _parse_rows(out)
    assert [x["layout"] for x in parsed] == ["NCHW", "channels-last"]
    ratio = float(re.search(rf"bf16: channels-last step time / NCHW = {NUM}", out)[1])
    assert ratio == pytest.approx(rows[1]["step_s"] / rows[0]["step_s"], abs=2e-3)
    with pytest.raises(BenchError, match="multiple of 16"):  # stride-32 level of a patch-8 ViT
        perf_det(config="smoke", backbone=TINY, img_size=72)


# --------------------------------------------------------------------------------------------------
# timing primitives: device timers, peak sizes, the fp16 path, the option table
# --------------------------------------------------------------------------------------------------
def test_device_timer_on_cpu_measures_each_region():
    import time

    from bench.perf.timing import DeviceTimer

    timer = DeviceTimer(torch.device("cpu"))
    for pause in (0.02, 0.06):
        timer.start()
        time.sleep(pause)
        timer.stop()
    first, second = timer.seconds()
    assert 0.02 <= first < 0.5 and 0.06 <= second < 0.6 and second > first


def test_cuda_peak_is_never_below_8192_and_cpu_keeps_its_budget():
    from bench.perf.timing import CUDA_PEAK_SIZE, peak_size

    cuda = torch.device("cuda")  # only the size rule: nothing runs on the device
    assert CUDA_PEAK_SIZE == 8192
    assert peak_size(torch.bfloat16, cuda) == 8192
    assert peak_size(torch.bfloat16, cuda, n=2048) == 8192
    assert peak_size(torch.float32, cuda, n=16384) == 16384
    cpu = torch.device("cpu")
    assert peak_size(torch.float32, cpu, n=512, budget_s=1e9) == 512  # doubling from 256 up to n
    assert peak_size(torch.float32, cpu, n=2048, budget_s=0.0) == 256  # no time: the smallest size


def test_matmul_peak_on_cpu_is_a_rate_of_the_timed_product():
    import time

    from bench.perf.timing import matmul_peak

    n = 256
    peak = matmul_peak(torch.float32, torch.device("cpu"), n=n, reps=3, budget_s=1e9)
    a = torch.randn(n, n)
    t = time.perf_counter()
    for _ in range(20):
        a @ a
    mean_rate = 20 * 2 * n**3 / (time.perf_counter() - t) / 1e9
    assert peak > 0 and 0.1 * mean_rate < peak < 50 * mean_rate


@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_step_times_trains_under_each_precision(amp):
    """One warm-up and two timed steps; the fp16 path goes through a GradScaler and still updates
    the weights (CPU autocast runs fp16 and bf16 matmuls)."""
    from bench.perf.timing import step_times

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    seen = []

    def loss_of(m):
        out = m(x)
        seen.append(out.dtype)
        return torch.nn.functional.cross_entropy(out.float(), y)

    times = step_times(model, loss_of, amp, 2, torch.device("cpu"))
    assert len(times) == 2 and all(t > 0 for t in times)
    assert seen == [{None: torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]] * 3
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_every_perf_command_passes_options_its_function_takes():
    import argparse
    import inspect

    from bench.perf.cli import MEASUREMENTS, add_perf_arguments

    parser = add_perf_arguments(argparse.ArgumentParser())
    for what, (run, names) in MEASUREMENTS.items():
        a = parser.parse_args([what])
        available = set(vars(a)) | {"variants"}
        params = set(inspect.signature(run).parameters)
        assert set(names.split()) <= available & params, (what, set(names.split()) - (available & params))
        # every option the subcommand has reaches its function (what / variant are dispatch names)
        assert set(vars(a)) - {"what", "variant"} <= set(names.split()), what
        if "device" in vars(a):
            assert a.device == "auto"


def test_time_dense_rows_and_printout_agree_for_a_plain_conv_net(capsys):
    """The dense timing without mmcv: every (precision, layout) variant interleaved, the printed
    header and rows parse back to the returned numbers, the peaks in a fixed order."""
    from bench.perf.dense import time_dense

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 16, 16)
    peaks = {"fp32": 10.0, "bf16": 2.0}
    rows = time_dense(
        "plain conv", net, lambda m: m(x).float().square().mean(), 2, [False, True],
        precisions=["bf16", "fp32"], iters=2, repeats=2, device="cpu", peaks=peaks,
    )  # fmt: skip
    out = capsys.readouterr().out
    assert [(r["prec"], r["channels_last"], r["steps"]) for r in rows] == [
        ("bf16", False, 4), ("bf16", True, 4), ("fp32", False, 4), ("fp32", True, 4)
    ]  # fmt: skip
    parsed = _parse_rows(out)
    assert [(p["prec"], p["layout"]) for p in parsed] == [
        ("bf16", "NCHW"), ("bf16", "channels-last"), ("fp32", "NCHW"), ("fp32", "channels-last")
    ]  # fmt: skip
    for p, r in zip(parsed, rows):
        assert p["peak"] == peaks and p["title"] == "plain conv"
        assert p["img_s"] == pytest.approx(r["img_s"], rel=2e-3, abs=1e-3)
        assert p["lo"] <= p["step_s"] <= p["hi"]
        assert r["of_peak"] == pytest.approx(r["gflop_s"] / peaks[r["prec"]])
    # FLOPs of 2 images: conv 3->8 (3x3) forward 2 MACs + weight gradient 2 MACs (the input needs none);
    # conv 8->4 (1x1) forward 2 MACs + input and weight gradients 4 MACs
    m1, m2 = 2 * 16 * 16 * 8 * 3 * 9, 2 * 16 * 16 * 4 * 8
    assert rows[0]["gflop_img"] * 2 * 1e9 == pytest.approx(4 * m1 + 6 * m2)
    for prec in ("bf16", "fp32"):
        assert f"  {prec}: channels-last step time / NCHW = " in out


def test_dense_perf_without_the_dense_libraries_says_make_setup(monkeypatch):
    from bench.core.errors import BenchError
    from bench.core.optional import require

    monkeypatch.setitem(__import__("sys").modules, "mmseg", None)  # as if not installed: import raises
    with pytest.raises(BenchError) as e:
        require("bench perf seg", ("mmseg",))
    assert str(e.value) == (
        "bench perf seg needs mmseg (import of mmseg halted; None in sys.modules): the light set-up leaves out "
        "the dense libraries; run `make setup` (mmcv ops, mmsegmentation, mmdet, detectron2)"
    )


# --------------------------------------------------------------------------------------------------
# channels-last = NCHW numerically
# --------------------------------------------------------------------------------------------------
def _conv_io_layouts(model, run):
    """{'NHWC': n, 'NCHW': n} of the outputs of every conv / deconv with a >1x1 output map."""
    seen = {"NHWC": 0, "NCHW": 0}

    def hook(mod, args, out):
        if out.shape[-1] > 1 and out.shape[-2] > 1:
            seen["NHWC" if out.is_contiguous(memory_format=torch.channels_last) else "NCHW"] += 1

    hs = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
    ]
    try:
        result = run()
    finally:
        for h in hs:
            h.remove()
    return result, seen


def _loss_and_grads(model, loss_of):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # RPN / RoI samplers
    (loss, seen) = _conv_io_layouts(model, lambda: loss_of(model))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads, seen


def _assert_same(a, b):
    """Same loss; every parameter's gradient within 2e-4 of its norm (+1e-6 absolute: the biases
    of convolutions followed by BN have a gradient that is 0 up to rounding, ~1e-9)."""
    la, ga, _ = a
    lb, gb, _ = b
    assert lb == pytest.approx(la, rel=1e-5)
    assert ga.keys() == gb.keys() and len(ga) > 20
    for k in ga:
        assert (gb[k] - ga[k]).norm() <= 2e-4 * ga[k].norm() + 1e-6, k


@pytest.fixture(scope="module")
def seg_model():
    import tempfile

    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import tasks.dense.mm_backbone  # noqa: F401
    from bench.perf import build_dense_model
    from tasks.segmentation.run import load_config

    register_all_modules(init_default_scope=True)
    m = load_config("smoke", backbone=TINY, data_root=".", work_dir=tempfile.gettempdir(), crop_size=64).model
    m.backbone.drop_path_rate = 0.0  # dropout masks are drawn in memory order: identical only without them
    m.decode_head.dropout_ratio = m.auxiliary_head.dropout_ratio = 0.0
    return build_dense_model(MODELS, m, channels_last=False)


def test_segmentation_channels_last_equals_nchw(seg_model):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    from bench.perf import dense_loss
    from tasks.dense.memory_format import set_memory_format

    # batch 4: BN after the PPM's 1x1 pooling normalises over the batch only; over 2 values its
    # backward amplifies rounding differences ~1000x
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 64, 64, generator=g)
    samples = [
        SegDataSample(
            gt_sem_seg=PixelData(data=torch.randint(0, 150, (1, 64, 64), generator=g)),
            metainfo=dict(img_shape=(64, 64), pad_shape=(64, 64), ori_shape=(64, 64)),
        )
        for _ in range(4)
    ]
    loss_of = lambda m: dense_loss(m, x, samples)  # noqa: E731
    nchw = _loss_and_grads(set_memory_format(seg_model, False), loss_of)
    nhwc = _loss_and_grads(set_memory_format(seg_model, True), loss_of)
    _assert_same(nchw, nhwc)
    # the layout really differs: every conv output NCHW in one, NHWC in the other (UperNet's
    # convs on the 4 levels, PPM, bottlenecks, the adapter's deconvs)
    assert nchw[2]["NHWC"] == 0 and nchw[2]["NCHW"] >= 10
    assert nhwc[2]["NCHW"] == 0 and nhwc[2]["NHWC"] == nchw[2]["NCHW"]
    assert seg_model.backbone.pyramid.fpn2.weight.is_contiguous(memory_format=torch.channels_last)
    set_memory_format(seg_model, False)
    assert seg_model.backbone.pyramid.fpn2.weight.is_contiguous()


@pytest.mark.parametrize("variant", ["fpn", "vitdet"])
def test_detection_channels_last_equals_nchw(variant):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import tasks.dense.mm_backbone  # noqa: F401
    import tasks.detection.mmdet_plugins  # noqa: F401
    from bench.perf import build_dense_model, dense_loss, random_det_samples
    from tasks.dense.memory_format import set_memory_format
    from tasks.detection.run import fill_model, load_config, resolve_config

    register_all_modules(init_default_scope=True)
    path, _ = resolve_config("smoke", variant, "vit_test_patch8")
    cfg = load_config(path)
    fill_model(cfg, path, backbone=TINY, num_classes=4)
    model = build_dense_model(MODELS, cfg.model, channels_last=False)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    samples = random_det_samples(2, 64, 3, 4, seed=1)
    loss_of = lambda m: dense_loss(m, x, samples)  # noqa: E731
    nchw = _loss_and_grads(set_memory_format(model, False), loss_of)
    nhwc = _loss_and_grads(set_memory_format(model, True), loss_of)
    _assert_same(nchw, nhwc)
    assert nchw[2]["NHWC"] == 0 and nhwc[2]["NCHW"] == 0 and nhwc[2]["NHWC"] == nchw[2]["NCHW"] >= 10
