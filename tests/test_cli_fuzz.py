"""Property-based fuzzing of the ``bench`` command line and of the readers behind it (issue #16).

The property, for every generated case: the command either succeeds (exit 0, only when the drawn
input is actually valid, e.g. ``--seed -1``), or it ends with exactly one ``error: <message>`` line
as the last line of stderr, exit status 2 (argparse's usage errors: one ``bench <cmd>: error:``
line, status 2), no ``Traceback`` anywhere on stderr, and **no new or changed file** in the
temporary working folder. Exit 3 (the non-finite-loss stop) is allowed for a run that trained.
Every case has a wall-clock bound (``CASE_SECONDS``; SIGALRM in-process): a hang fails.

What is generated:

* ``test_option_fuzz``: for each subcommand, a small valid invocation with one or two options
  replaced by hostile values (negative, zero, inf, nan, huge, empty, non-numeric; paths that do not
  exist, are folders, text files, empty files, truncated checkpoints). Options whose valid-but-huge
  values only mean "train for longer" (``--steps``, ``--iters``, ...) do not draw huge values.
* ``test_checkpoint_fuzz``: a real ``vit_test_patch8`` MAE / BEiT checkpoint with mutations
  (``pos_embed`` and relative-position-table shapes, dtypes, dropped / renamed keys, non-tensor
  values, mmpretrain-style names, stored ``arch`` junk, truncated / flipped bytes), loaded by the
  registry (``build_backbone``, what ``bench cls/seg/det`` do first) and by
  ``MaskedAutoencoder.from_checkpoint`` (``bench visualize``).
* ``test_suite_fuzz``: ``bench run <mutated ci.yaml> --dry-run``.
* ``test_coco_fuzz`` / ``test_ade_fuzz``: generated COCO / ADE20K sets with mutations (0 val
  images, ``file_name: ../../x``, 1x1 images, truncated JPEG / PNG, empty annotation lists, junk
  values) read by the tasks' readers (``read_coco`` / ``read_ade20k``: what ``bench det/seg`` and
  ``bench run`` check before training).
* ``test_fifo_does_not_hang``: a FIFO given as checkpoint / suite / results store, as a real
  subprocess with a timeout.

Issue #24's surface (``--cfg-options`` naming code, COCO annotation fields, header-declared sizes,
FIFOs in run folders) is fuzzed by ``tests/test_fuzz_round3.py`` with the same property and helpers.

``FUZZ_EXAMPLES`` (environment, default 25 per test) scales the run; CI uses the default. The number
of cases run is printed at the end (``-s``) and written to ``$FUZZ_REPORT`` if set.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import main as bench_main
from bench.core.errors import BenchError

ROOT = Path(__file__).resolve().parents[1]
N = int(os.environ.get("FUZZ_EXAMPLES", "25"))
CASE_SECONDS = int(os.environ.get("FUZZ_CASE_SECONDS", "60"))
SETTINGS = settings(
    max_examples=N,
    deadline=None,
    derandomize=os.environ.get("FUZZ_RANDOM") is None,
    suppress_health_check=list(HealthCheck),
)
COUNTS: dict[str, int] = {}
FAILURES: list[str] = []


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    def fire(signum, frame):
        raise Hang(f"case still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            out[rel] = "special"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            st_ = p.stat()
            out[rel] = f"{st_.st_size}:{st_.st_mtime_ns}"
    return out


def run_cli(argv: list[str], cwd: Path) -> tuple[int | None, str, str]:
    """``bench.cli.main(argv)`` in ``cwd`` with stdout/stderr captured; a raw exception (anything but
    SystemExit) is returned as code None with its traceback in stderr."""
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), time_limit(CASE_SECONDS):
            try:
                code = bench_main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 2
    except BaseException:  # noqa: BLE001 - a raw exception (or a hang) is what must not happen
        code = None
        err.write(traceback.format_exc())
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


def collecting(fn):
    """With FUZZ_COLLECT=1 (exploration runs), a failed property is recorded and the run goes on, so
    that one run lists every distinct failure; otherwise it fails the test."""

    def wrapped(*a, **k):
        try:
            return fn(*a, **k)
        except AssertionError as e:
            if not os.environ.get("FUZZ_COLLECT"):
                raise
            FAILURES.append(str(e)[:3000])

    return wrapped


@collecting
def check_cli(name: str, argv: list[str], cwd: Path, outputs: tuple[str, ...] = ()):
    """The property. ``outputs``: paths (relative to ``cwd``) a *successful* run may create."""
    COUNTS[name] = COUNTS.get(name, 0) + 1
    before = snapshot(cwd)
    t0 = time.time()
    code, _, err = run_cli(argv, cwd)
    dt = time.time() - t0
    after = snapshot(cwd)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    lines = err.strip().splitlines()
    what = f"bench {' '.join(argv)}\n  exit {code} after {dt:.1f}s; stderr tail: {err[-1500:]!r}"
    assert code is not None, f"raw exception / hang: {what}"
    assert "Traceback" not in err, f"traceback on stderr: {what}"
    if code == 0 or code == 3:
        stray = [c for c in changed if not any(c == o or c.startswith(o + "/") for o in outputs)]
        assert not stray, f"files outside the documented outputs {outputs}: {stray[:5]}; {what}"
        return code
    assert code == 2, f"exit status {code}: {what}"
    assert lines, f"no error line: {what}"
    last = lines[-1]
    assert last.startswith("error: ") or (last.startswith("bench ") and ": error: " in last), f"last line: {what}"
    assert sum(l.startswith("error: ") for l in lines) <= 1, f"several error lines: {what}"
    assert not changed, f"a refused run changed {changed[:5]}: {what}"
    return code


@collecting
def check_call(name: str, fn):
    """For the reader fuzzers: ``fn()`` returns, or raises BenchError with one non-empty line."""
    COUNTS[name] = COUNTS.get(name, 0) + 1
    try:
        with time_limit(CASE_SECONDS):
            fn()
    except BenchError as e:
        msg = str(e)
        assert msg.strip() and "\n" not in msg and "\r" not in msg, f"bad message: {msg!r}"
    except Hang:
        raise AssertionError(f"{name}: hang") from None
    except Exception:  # noqa: BLE001 - a raw exception is what must not happen
        raise AssertionError(f"{name}: raw exception {traceback.format_exc()[-1500:]}") from None


# --------------------------------------------------------------------------------------------------
# Shared valid inputs (built once)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    from backbones.mae import MaskedAutoencoder
    from backbones.pretrainers.common import encoder_config
    from backbones.vit import VisionTransformer
    from bench.core.checkpoint import save_atomic
    from tasks.classification.datasets import make_image_folder
    from tasks.detection.coco_data import make_coco_dataset
    from tasks.segmentation.ade_data import make_ade20k_dataset

    base = tmp_path_factory.mktemp("fuzz_inputs")
    torch.manual_seed(0)
    mae = MaskedAutoencoder.from_arch("vit_test_patch8")
    save_atomic({"model": mae.state_dict(), "arch": mae.arch, "init": "mae"}, base / "mae.pth")
    beit = VisionTransformer(**encoder_config("beit", "vit_test_patch8"))
    torch.save({"model": beit.state_dict()}, base / "beit.pth")
    make_image_folder(base / "folder", n_train_per_class=2, n_val_per_class=1, num_classes=2, image_size=32)
    make_coco_dataset(base / "coco", n_train=1, n_val=1, image_size=(64, 64))
    make_ade20k_dataset(base / "ade", n_train=1, n_val=1, image_size=(32, 32))
    (base / "text.txt").write_text("these are my notes\n")
    (base / "empty.pth").write_bytes(b"")
    data = (base / "mae.pth").read_bytes()
    (base / "truncated.pth").write_bytes(data[: len(data) // 2])
    (base / "adir").mkdir()
    return {
        "base": base,
        "mae": base / "mae.pth",
        "beit": base / "beit.pth",
        "folder": base / "folder",
        "coco": base / "coco",
        "ade": base / "ade",
        "suite": ROOT / "bench" / "suites" / "ci.yaml",
    }


def _fresh(fx, name: str) -> Path:
    """An empty working folder per case (a case may not see another's outputs)."""
    d = fx["base"] / "cases" / f"{name}-{COUNTS.get(name, 0)}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------
NUMBERS = ["-1", "0", "-8", "inf", "-inf", "nan", "1e-300", "", "abc", "0x10", "1.5"]
HUGE = ["99999999999999999999", "1e308"]
PATHS = ["{base}/nope/x.pth", "{base}/adir", "{base}/text.txt", "{base}/empty.pth", "{base}/truncated.pth", ""]

# command -> (base argv, outputs a valid run may write, {option: hostile values})
PRE = [
    "pretrain",
    "--arch",
    "vit_test_patch8",
    "--out",
    "run",
    "--steps",
    "1",
    "--batch-size",
    "2",
    "--epoch-size",
    "4",
    "--no-progress",
]
CLS = [
    "cls",
    "--protocol",
    "linear",
    "--dataset",
    "folder",
    "--data-root",
    "{folder}",
    "--backbone",
    "random_vit_test_patch8",
    "--config",
    "smoke",
    "--epochs",
    "1",
    "--batch-size",
    "2",
    "--out",
    "run",
    "--results",
    "res",
]
VIS = ["visualize", "--checkpoint", "{mae}", "--out", "fig.png", "--n", "1"]
SEG = [
    "seg",
    "--backbone",
    "random_vit_test_patch8",
    "--data-root",
    "{ade}",
    "--config",
    "smoke",
    "--iters",
    "1",
    "--work-dir",
    "work",
    "--results",
    "res",
]
DET = [
    "det",
    "--backbone",
    "random_vit_test_patch8",
    "--data-root",
    "{coco}",
    "--config",
    "smoke",
    "--iters",
    "1",
    "--work-dir",
    "work",
    "--results",
    "res",
]
PERF = ["perf", "pretrain", "--arch", "vit_test_patch8", "--batch-size", "2", "--iters", "1", "--threads", "1"]
TABLE = ["table", "--results", "{base}/nope", "--out", "tables"]
RUN = ["run", "{suite}", "--dry-run", "--out", "out"]

OPTIONS = {
    "pretrain": (
        PRE,
        ("run",),
        {
            "--steps": NUMBERS,
            "--epochs": NUMBERS,
            "--batch-size": NUMBERS + HUGE,
            "--accum-iter": NUMBERS + HUGE,
            "--blr": NUMBERS + HUGE,
            "--lr": NUMBERS + HUGE,
            "--weight-decay": NUMBERS + HUGE,
            "--warmup-epochs": NUMBERS + HUGE,
            "--workers": NUMBERS + HUGE,
            "--ckpt-every": NUMBERS + HUGE,
            "--seed": NUMBERS + HUGE,
            "--max-nonfinite": NUMBERS + HUGE,
            "--img-size": NUMBERS + HUGE,
            "--epoch-size": NUMBERS,
            "--mask-ratio": NUMBERS + HUGE,
            "--arch": ["", "vit_nope", "../x"],
            "--method": ["", "dino"],
            "--data": PATHS,
            "--out": ["{base}/text.txt", "", "/dev/null"],
        },
    ),
    "cls": (
        CLS,
        ("run", "res"),
        {
            "--epochs": NUMBERS,
            "--batch-size": NUMBERS + HUGE,
            "--seed": NUMBERS + HUGE,
            "--k": NUMBERS + HUGE,
            "--data-root": PATHS,
            "--checkpoint": PATHS,
            "--config": PATHS + ["nope"],
            "--backbone": ["", "mae_", "x_y"],
            "--results": ["{base}/text.txt", "{base}/adir", ""],
            "--out": ["{base}/text.txt", ""],
            "--device": ["", "cuda:9", "tpu"],
        },
    ),
    "visualize": (
        VIS,
        ("fig.png",),
        {
            "--n": NUMBERS,
            "--seed": NUMBERS + HUGE,
            "--mask-ratios": NUMBERS + HUGE,
            "--checkpoint": PATHS,
            "--images": PATHS,
            "--out": ["{base}/adir", "", "nodir/fig.png", "fig.txt"],
        },
    ),
    "seg": (
        SEG,
        ("work", "res"),
        {
            "--iters": NUMBERS,
            "--crop-size": NUMBERS + HUGE,
            "--ckpt-interval": NUMBERS + HUGE,
            "--checkpoint": PATHS,
            "--data-root": PATHS,
            "--config": PATHS + ["nope"],
            "--cfg-options": ["a", "=1", "model=1", "train_cfg.max_iters=abc"],
            "--results": ["{base}/text.txt", ""],
            "--work-dir": ["{base}/text.txt", ""],
        },
    ),
    "det": (
        DET,
        ("work", "res"),
        {
            "--iters": NUMBERS,
            "--batch-size": NUMBERS + HUGE,
            "--ckpt-interval": NUMBERS + HUGE,
            "--checkpoint": PATHS,
            "--data-root": PATHS,
            "--config": PATHS + ["nope"],
            "--cfg-options": ["a", "=1", "model=1"],
            "--dets-out": ["{base}/adir", ""],
            "--work-dir": ["{base}/text.txt", ""],
        },
    ),
    "perf": (
        PERF,
        (),
        {
            "--iters": NUMBERS,
            "--batch-size": NUMBERS,
            "--img-size": NUMBERS + HUGE,
            "--threads": NUMBERS + HUGE,
            "--arch": ["", "vit_nope"],
            "--decoder-depths": NUMBERS,
            "--device": ["", "cuda:9", "tpu"],
        },
    ),
    "table": (
        TABLE,
        ("tables",),
        {
            "--results": PATHS,
            "--out": ["{base}/text.txt", ""],
            "--formats": ["", ",", "pdf", "csv,,md"],
            "--reference": PATHS,
        },
    ),
    "run": (
        RUN,
        ("out",),
        {"--seeds": NUMBERS + HUGE, "--only": ["", "[", "**"], "--skip": ["", "["], "--out": ["{base}/text.txt", ""]},
    ),
}
# Options whose drawn value may be valid and then runs (seed -1, lr 0, ...): still bounded by the
# base invocation (1 step / 1 iteration / 1 epoch on tiny data). det/seg/cls runs are the slow
# ones (mmdet/mmseg model builds), so their fuzzing is kept to the refusal paths in CI.
SLOW = {"seg", "det"}
# Open failures found by this fuzzer in files other helpers own (see docs/bad_inputs.md, "Fuzzing the
# CLI"): drawn only in exploration runs (FUZZ_COLLECT=1) until fixed, so CI stays green and bounded.
OPEN: set = set()  # (command, option) pairs whose fix is pending elsewhere; none at present


@st.composite
def option_case(draw):
    cmd = draw(st.sampled_from(sorted(c for c in OPTIONS if os.environ.get("FUZZ_COLLECT") or c != "perf")))
    base, outputs, opts = OPTIONS[cmd]
    pool = sorted(o for o in opts if os.environ.get("FUZZ_COLLECT") or (cmd, o) not in OPEN)
    chosen = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True))
    argv = list(base)
    for opt in chosen:
        value = draw(st.sampled_from(opts[opt]))
        if opt in argv:
            i = argv.index(opt)
            argv[i + 1] = value
        else:
            argv += [opt, value]
    return cmd, argv, outputs


def _fill(argv, fx):
    values = {k: str(v) for k, v in fx.items()}
    return [a.format(**values) if "{" in a else a for a in argv]


@SETTINGS
@given(case=option_case())
def test_option_fuzz(case, fx):
    cmd, argv, outputs = case
    cwd = _fresh(fx, "option")
    check_cli("option", _fill(argv, fx), cwd, outputs)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------
def _pe_shapes(pe):
    D = pe.shape[-1]
    return [
        pe[0, 0],
        pe[:, :1],
        pe[:, :0],
        pe[None],
        pe[..., : D // 2],
        pe[:, :-1],
        pe.repeat(2, 1, 1),
        pe.long(),
        pe.to(torch.complex64),
        pe.bool(),
        torch.zeros(0),
        torch.tensor(1.0),
        pe.half(),
    ]


@st.composite
def ckpt_case(draw):
    kind = draw(st.sampled_from(["mae", "beit"]))
    mutation = draw(
        st.sampled_from(
            [
                "pos_embed",
                "drop",
                "rename",
                "not_tensor",
                "dtype",
                "truncate",
                "flip",
                "arch_junk",
                "mmpretrain",
                "rel_table",
                "empty_key",
                "nan",
            ]
        )
    )
    return kind, mutation, draw(st.integers(0, 10_000)), draw(st.integers(0, 12))


def _mutate_ckpt(fx, kind, mutation, r, j, path: Path) -> str:
    """Write the mutated checkpoint to ``path``; return the backbone name to load it with."""
    name = "mae_vit_test_patch8" if kind == "mae" else "beit_vit_test_patch8"
    obj = torch.load(fx[kind], weights_only=True)
    sd = obj["model"]
    keys = sorted(sd)
    key = keys[r % len(keys)]
    if mutation == "pos_embed":
        shapes = _pe_shapes(sd["pos_embed"])
        sd["pos_embed"] = shapes[j % len(shapes)]
    elif mutation == "drop":
        sd.pop(key)
    elif mutation == "rename":
        sd[key + ".x" if j % 2 else key.replace(".", "_", 1)] = sd.pop(key)
    elif mutation == "not_tensor":
        sd[key] = [None, "w", 3, 1.5, {"a": 1}, [1, 2]][j % 6]
    elif mutation == "dtype":
        sd[key] = sd[key].to([torch.int64, torch.bool, torch.complex64, torch.float16, torch.uint8][j % 5])
    elif mutation == "nan":
        sd[key] = torch.full_like(sd[key], float("nan")) if sd[key].is_floating_point() else sd[key]
    elif mutation == "arch_junk":
        arch = dict(obj.get("arch") or {"decoder_embed_dim": 16})
        field = sorted(arch)[j % len(arch)]
        arch[field] = ["big", -8, 0, None, 1.5, [1], 10**9][r % 7]
        obj["arch"] = arch
    elif mutation == "mmpretrain":
        mm = {"backbone.patch_embed.projection.weight": sd["patch_embed.proj.weight"]}
        bad = [
            "backbone.layers.0",
            "backbone.layers.x.ln1.weight",
            "backbone.layers.0.foo.weight",
            "backbone.layers",
            "backbone.layers..ln1.weight",
            "backbone.nope",
            "neck.x",
        ][j % 7]
        mm[bad] = torch.zeros(3)
        obj = {"state_dict": mm}
    elif mutation == "rel_table":
        tkeys = [k for k in sd if k.endswith("relative_position_bias_table")] or [
            "blocks.0.attn.relative_position_bias_table"
        ]
        t = sd.get(tkeys[0], torch.zeros(228, 2))
        sd[tkeys[0]] = [
            t[:7],
            t[:0],
            t[:, :1],
            t[:1],
            t[0],
            t[None],
            t.repeat(2, 1),
            torch.zeros(3, t.shape[1]),
            torch.zeros(2, t.shape[1]),
            t.long(),
        ][j % 10]
    elif mutation == "empty_key":
        obj["model"] = {}
    if mutation in ("truncate", "flip"):
        torch.save(obj, path)
        data = bytearray(path.read_bytes())
        at = r % len(data)
        if mutation == "truncate":
            data = data[:at]
        else:
            for i in range(at, min(len(data), at + 1 + j * 8)):
                data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        torch.save(obj, path)
    return name


@SETTINGS
@given(case=ckpt_case())
def test_checkpoint_fuzz(case, fx):
    from backbones import build_backbone
    from backbones.mae import MaskedAutoencoder

    kind, mutation, r, j = case
    cwd = _fresh(fx, "ckpt")
    path = cwd / "ckpt.pth"
    name = _mutate_ckpt(fx, kind, mutation, r, j, path)
    check_call("checkpoint", lambda: build_backbone(name, path))
    if kind == "mae":
        check_call("checkpoint", lambda: MaskedAutoencoder.from_checkpoint(path))


# --------------------------------------------------------------------------------------------------
# Suites (bench run --dry-run)
# --------------------------------------------------------------------------------------------------
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**6),
    st.sampled_from([float("nan"), float("inf"), -1.5]),
    st.text(max_size=8),
    st.lists(st.integers(-2, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))


@st.composite
def suite_case(draw):
    suite = yaml.safe_load((ROOT / "bench" / "suites" / "ci.yaml").read_text())
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(suite))
        p = draw(st.sampled_from(paths))
        parent = suite
        for k in p[:-1]:
            parent = parent[k]
        if draw(st.booleans()):
            parent[p[-1]] = draw(JUNK)
        else:
            parent.pop(p[-1])
    return suite


@SETTINGS
@given(suite=suite_case())
def test_suite_fuzz(suite, fx):
    cwd = _fresh(fx, "suite")
    try:
        text = yaml.safe_dump(suite)
    except Exception:  # a value yaml cannot write: not a suite anyone can give
        return
    (cwd / "s.yaml").write_text(text)
    check_cli("suite", ["run", str(cwd / "s.yaml"), "--dry-run", "--out", "out"], cwd, ("out",))


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------
COCO_MUTATIONS = [
    "no_val_images",
    "dotdot_file_name",
    "abs_file_name",
    "tiny_image",
    "truncated_jpeg",
    "empty_annotations",
    "junk_value",
    "drop_key",
    "image_is_dir",
    "zero_size",
    "bbox_negative",
    "category_junk",
]


@st.composite
def coco_case(draw):
    return (
        draw(st.sampled_from(COCO_MUTATIONS)),
        draw(st.sampled_from(["train2017", "val2017"])),
        draw(JUNK),
        draw(st.integers(0, 1000)),
    )


@SETTINGS
@given(case=coco_case())
def test_coco_fuzz(case, fx):
    from PIL import Image

    from tasks.detection.task import read_coco

    mutation, split, junk, r = case
    root = Path(shutil.copytree(fx["coco"], _fresh(fx, "coco") / "coco"))
    ann_file = root / "annotations" / f"instances_{split}.json"
    d = json.loads(ann_file.read_text())
    img = d["images"][0]
    img_path = root / split / img["file_name"]
    if mutation == "no_val_images":
        d["images"], d["annotations"] = [], []
    elif mutation == "dotdot_file_name":
        img["file_name"] = "../../x.jpg"
    elif mutation == "abs_file_name":
        img["file_name"] = str(fx["base"] / "text.txt")
    elif mutation == "tiny_image":
        Image.new("RGB", (1, 1)).save(img_path)
    elif mutation == "truncated_jpeg":
        data = img_path.read_bytes()
        img_path.write_bytes(data[: max(1, (r % 100) * len(data) // 100)])
    elif mutation == "empty_annotations":
        d["annotations"] = []
    elif mutation == "image_is_dir":
        img_path.unlink()
        img_path.mkdir()
    elif mutation == "zero_size":
        img["width"], img["height"] = [(0, 0), (-1, 5), (1e9, 1), ("64", "64")][r % 4]
    elif mutation == "bbox_negative" and d["annotations"]:
        d["annotations"][0]["bbox"] = [[-5, -5, 10, 10], [0, 0, 0, 0], [0, 0, -3, 4], [1, 2, 3], "x"][r % 5]
    elif mutation == "category_junk":
        d["categories"][0][["id", "name", "supercategory"][r % 3]] = junk
    elif mutation in ("junk_value", "drop_key"):
        section = ["images", "annotations", "categories"][r % 3]
        if d[section]:
            item = d[section][0]
            key = sorted(item)[r % len(item)]
            if mutation == "drop_key":
                item.pop(key)
            else:
                item[key] = junk
    ann_file.write_text(json.dumps(d))
    check_call("coco", lambda: read_coco(root))


ADE_MUTATIONS = [
    "tiny_image",
    "truncated_jpeg",
    "corrupt_jpeg_mid",
    "truncated_png",
    "rgb_label",
    "label_size",
    "label_is_text",
    "empty_split",
    "image_is_dir",
    "value_too_big",
    "zero_byte",
]


@SETTINGS
@given(mutation=st.sampled_from(ADE_MUTATIONS), split=st.sampled_from(["training", "validation"]), r=st.integers(1, 99))
def test_ade_fuzz(mutation, split, r, fx):
    import numpy as np
    from PIL import Image

    from tasks.segmentation.task import read_ade20k

    root = Path(shutil.copytree(fx["ade"], _fresh(fx, "ade") / "ade"))
    data_root = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    img = sorted((data_root / "images" / split).glob("*.jpg"))[0]
    lab = data_root / "annotations" / split / (img.stem + ".png")
    if mutation == "tiny_image":
        Image.new("RGB", (1, 1)).save(img)
        Image.new("L", (1, 1)).save(lab)
    elif mutation == "truncated_jpeg":
        data = img.read_bytes()
        img.write_bytes(data[: r * len(data) // 100])
    elif mutation == "corrupt_jpeg_mid":
        data = bytearray(img.read_bytes())
        mid = len(data) // 2
        data[mid : mid + 64] = bytes(64)
        img.write_bytes(bytes(data))
    elif mutation == "truncated_png":
        data = lab.read_bytes()
        lab.write_bytes(data[: r * len(data) // 100])
    elif mutation == "rgb_label":
        Image.open(lab).convert("RGB").save(lab)
    elif mutation == "label_size":
        Image.new("L", (7, 5)).save(lab)
    elif mutation == "label_is_text":
        lab.write_text("not a png")
    elif mutation == "empty_split":
        img.unlink()
        lab.unlink()
    elif mutation == "image_is_dir":
        img.unlink()
        img.mkdir()
    elif mutation == "value_too_big":
        a = np.asarray(Image.open(lab)).copy()
        a[0, 0] = 200 + r % 50
        Image.fromarray(a).save(lab)
    elif mutation == "zero_byte":
        img.write_bytes(b"")
    check_call("ade", lambda: read_ade20k(root))


# --------------------------------------------------------------------------------------------------
# FIFOs: a real process, because opening a FIFO for reading blocks until a writer comes
# --------------------------------------------------------------------------------------------------
FIFO_ARGV = {
    "checkpoint": [
        "cls",
        "--protocol",
        "linear",
        "--dataset",
        "folder",
        "--data-root",
        "{folder}",
        "--backbone",
        "mae_vit_test_patch8",
        "--config",
        "smoke",
        "--out",
        "run",
        "--results",
        "res",
        "--checkpoint",
        "{fifo}",
    ],
    "suite": ["run", "{fifo}", "--dry-run", "--out", "out"],
    "store": ["table", "--results", "{fifo}", "--out", "tables"],
    "visualize": ["visualize", "--checkpoint", "{fifo}", "--out", "fig.png"],
}


@pytest.mark.parametrize("what", sorted(FIFO_ARGV))
def test_fifo_does_not_hang(what, fx, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    argv = [a.format(fifo=fifo, folder=fx["folder"]) for a in FIFO_ARGV[what]]
    before = snapshot(tmp_path)
    COUNTS["fifo"] = COUNTS.get("fifo", 0) + 1
    try:
        r = subprocess.run(
            [sys.executable, "-m", "bench.cli", *argv],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"bench {' '.join(argv)} hangs on a FIFO")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: "), r.stderr[-2000:]
    assert snapshot(tmp_path) == before


def test_zz_report():
    """Print (and optionally record) how many generated cases ran."""
    report = {"examples_per_test": N, "cases": COUNTS, "total": sum(COUNTS.values()), "failures": FAILURES}
    print("\nfuzz cases:", json.dumps(report))
    if os.environ.get("FUZZ_REPORT"):
        Path(os.environ["FUZZ_REPORT"]).write_text(json.dumps(report, indent=1))
