"""The classification protocol configs and their arguments, without torch: what the task registry,
the CLI's ``--help`` and the suite loader need (``PROTOCOLS``, ``recipe``, ``load_config``,
``check_k``). ``tasks.classification.protocols`` builds models and training pieces from them.

Each protocol is a YAML file in ``configs/`` whose comments give the source of every value.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from bench.core.errors import BenchError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PROTOCOLS = ("finetune", "linear", "partial")
MLP = "mlp"  # k for "only the MLP sub-block of the last block" (Sec. 4.3: 79.1%)

# Every key a protocol config may hold, with the types its value may take (None: may be null).
KEYS: dict[str, tuple] = {
    "protocol": (str,),
    "img_size": (int, None),
    "global_pool": (str,),
    "drop_path": (float,),
    "head_init_std": (float,),
    "optimizer": (str,),
    "betas": (list,),
    "momentum": (float,),
    "blr": (float,),
    "lr": (float, None),
    "min_lr": (float,),
    "weight_decay": (float,),
    "layer_decay": (float, None),
    "batch_size": (int,),
    "accum_iter": (int,),
    "epochs": (float,),
    "warmup_epochs": (float,),
    "clip_grad": (float, None),
    "smoothing": (float,),
    "mixup": (float,),
    "cutmix": (float,),
    "mixup_prob": (float,),
    "mixup_switch_prob": (float,),
    "mixup_mode": (str,),
    "auto_augment": (str, None),
    "color_jitter": (float, None),
    "reprob": (float,),
    "remode": (str,),
    "recount": (int,),
    "crop_scale": (list,),
    "hflip": (float,),
    "interpolation": (str,),
    "crop_pct": (float, None),
    "cache_features": (bool,),
    "eval_batch_size": (int,),
    "num_workers": (int,),
    "ckpt_every": (int,),
    "sweep": (list,),
}
FILE_ONLY_KEYS = ("inherit", "per_arch")


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------
def recipe(protocol: str, k: int | str | None = None) -> str:
    """The config a run trains with: partial fine-tuning of 0 blocks is linear probing (Fig. 9)."""
    return "linear" if protocol == "partial" and k == 0 else protocol


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise BenchError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: deep nesting
        raise BenchError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchError(f"{path}: top level must be a mapping of keys to values")
    return data


def _check_value(key: str, value: Any, where: str) -> Any:
    if key not in KEYS:
        raise BenchError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(KEYS))})")
    types = KEYS[key]
    if value is None:
        if None in types:
            return None
        raise BenchError(f"{where}: key {key!r} must not be null")
    if float in types and isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)

    def is_a(t) -> bool:  # bool is an int to Python, never here
        return t is not None and (t is bool if isinstance(value, bool) else isinstance(value, t))

    if not any(is_a(t) for t in types):
        names = " or ".join("null" if t is None else t.__name__ for t in types)
        raise BenchError(f"{where}: key {key!r} must be {names}, got {value!r:.60}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BenchError(f"{where}: key {key!r} must be finite, got {value}")
    return value


def _load_file(path: Path, seen: tuple = ()) -> dict:
    """A config file with its ``inherit`` chain resolved (child keys replace parent keys)."""
    if path in seen:
        raise BenchError(f"{path}: key 'inherit' forms a cycle")
    data = _read_yaml(path)
    base = {}
    if "inherit" in data:
        parent = data.pop("inherit")
        if not isinstance(parent, str):
            raise BenchError(f"{path}: key 'inherit' must be a file name")
        base = _load_file(path.parent / parent, seen + (path,))
    per_arch = data.pop("per_arch", base.pop("per_arch", {}))
    if not isinstance(per_arch, dict) or not all(isinstance(v, dict) for v in per_arch.values()):
        raise BenchError(f"{path}: key 'per_arch' must map architecture names to mappings")
    for key, value in data.items():
        base[key] = _check_value(key, value, str(path))
    per_arch = {
        arch: {key: _check_value(key, value, f"{path} per_arch.{arch}") for key, value in values.items()}
        for arch, values in per_arch.items()
    }
    base["per_arch"] = per_arch
    return base


def protocol_config_path(protocol: str, k: int | str | None = None) -> Path:
    check_protocol(protocol)
    return CONFIG_DIR / f"{recipe(protocol, k)}.yaml"


def load_config(
    protocol: str, arch: str | None = None, k: int | str | None = None, overrides: str | Path | dict | None = None
) -> dict:
    """The flat config of a run: ``configs/<recipe>.yaml`` (with ``inherit``), then its
    ``per_arch[arch]`` values, then ``overrides`` (a dict, a YAML path, or the name of a file in
    ``configs/`` such as ``'smoke'``; its optional ``per_protocol: {linear: {...}}`` applies to runs
    with that recipe). Unknown keys and wrong types are a one-line BenchError."""
    path = protocol_config_path(protocol, k)
    cfg = _load_file(path)
    per_arch = cfg.pop("per_arch")
    cfg.update(per_arch.get(arch, {}))
    if overrides is not None:
        if isinstance(overrides, dict):
            where, data = "config overrides", dict(overrides)
        else:
            opath = Path(overrides)
            if not opath.exists() and not opath.suffix and (CONFIG_DIR / f"{opath}.yaml").is_file():
                opath = CONFIG_DIR / f"{opath}.yaml"
            where, data = str(opath), _read_yaml(opath)
        for key in FILE_ONLY_KEYS:
            if key in data:
                raise BenchError(f"{where}: key {key!r} is only allowed in the protocol files of {CONFIG_DIR}")
        per_protocol = data.pop("per_protocol", {})
        if not isinstance(per_protocol, dict) or not all(
            name in PROTOCOLS and isinstance(v, dict) for name, v in per_protocol.items()
        ):
            raise BenchError(f"{where}: key 'per_protocol' must map {', '.join(PROTOCOLS)} to mappings")
        for key, value in list(data.items()) + list(per_protocol.get(cfg["protocol"], {}).items()):
            if key == "protocol" and value != cfg["protocol"]:
                raise BenchError(f"{where}: key 'protocol' is {value!r} but the run's protocol is {cfg['protocol']!r}")
            cfg[key] = _check_value(key, value, where)
    missing = [key for key in KEYS if key not in cfg and key != "sweep"]
    if missing:
        raise BenchError(f"{path}: missing key {missing[0]!r}")
    _check_semantics(cfg, path)
    return cfg


def _check_semantics(cfg: dict, where) -> None:
    if cfg["global_pool"] not in ("avg", "token"):
        raise BenchError(f"{where}: key 'global_pool' must be 'avg' or 'token', got {cfg['global_pool']!r}")
    if cfg["optimizer"] not in ("adamw", "sgd", "lars"):
        raise BenchError(f"{where}: key 'optimizer' must be adamw, sgd or lars, got {cfg['optimizer']!r}")
    for key in ("batch_size", "accum_iter", "eval_batch_size"):
        if cfg[key] < 1:
            raise BenchError(f"{where}: key {key!r} must be >= 1, got {cfg[key]}")
    if cfg["epochs"] <= 0:
        raise BenchError(f"{where}: key 'epochs' must be > 0, got {cfg['epochs']}")
    if cfg.get("img_size") is not None and not 8 <= cfg["img_size"] <= 1024:
        raise BenchError(f"{where}: key 'img_size' must be in 8..1024, got {cfg['img_size']}")
    for key in ("epochs", "warmup_epochs"):  # the engine turns them into step counts
        if not 0 <= cfg[key] <= 100_000:
            raise BenchError(f"{where}: key {key!r} must be in 0..100000, got {cfg[key]}")
    for key in ("betas", "crop_scale"):
        if len(cfg[key]) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in cfg[key]):
            raise BenchError(f"{where}: key {key!r} must be two numbers, got {cfg[key]!r}")


def partial_sweep(depth: int, cfg: dict | None = None) -> list:
    """The k of Figure 9 that fit a ``depth``-block ViT (always ending with ``depth``, full
    fine-tuning), e.g. ViT-B: [0, 'mlp', 1, 2, 4, 6, 12]."""
    sweep = (cfg or load_config("partial", k=1)).get("sweep") or []
    ks = [k for k in sweep if k == MLP or (isinstance(k, int) and k <= depth)]
    return ks if depth in ks else ks + [depth]


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------
def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise BenchError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


def parse_k(value) -> int | str | None:
    """``--k`` as given on the command line: a block count, ``mlp`` (or ``0.5``) or None."""
    if value is None or value == MLP:
        return value
    text = str(value).strip().lower()
    if text in (MLP, "0.5"):
        return MLP
    if text.isascii() and text.isdigit():
        return int(text)
    raise BenchError(f"--k must be a number of blocks (0, 1, 2, ...) or 'mlp', got {value!r}")


def check_k(protocol: str, k, depth: int) -> int | str | None:
    """Validate ``k`` against the protocol and the backbone depth; returns the parsed k."""
    check_protocol(protocol)
    k = parse_k(k)
    if protocol != "partial":
        if k is not None:
            raise BenchError(f"--k only applies to protocol 'partial' (got k={k!r} with protocol {protocol!r})")
        return None
    if k is None:
        raise BenchError(f"protocol 'partial' needs --k: a number of blocks 0..{depth} or 'mlp'")
    if k != MLP and k > depth:
        raise BenchError(f"--k {k} is larger than the depth {depth} of the backbone (k must be 0..{depth} or 'mlp')")
    return k


# --------------------------------------------------------------------------------------------------
# Departures from the paper's protocol
# --------------------------------------------------------------------------------------------------
# Keys that change what is trained or measured (not num_workers, eval batch, checkpoint cadence;
# accum_iter only splits the same global batch).
RECIPE_KEYS = (
    "img_size",
    "global_pool",
    "drop_path",
    "head_init_std",
    "optimizer",
    "betas",
    "momentum",
    "min_lr",
    "weight_decay",
    "layer_decay",
    "warmup_epochs",
    "clip_grad",
    "smoothing",
    "mixup",
    "cutmix",
    "mixup_prob",
    "mixup_switch_prob",
    "mixup_mode",
    "auto_augment",
    "color_jitter",
    "reprob",
    "remode",
    "recount",
    "crop_scale",
    "hflip",
    "interpolation",
    "crop_pct",
)

# Training-time augmentation: what a cached-feature probe never applies.
TRAIN_AUGMENTATION_KEYS = ("auto_augment", "color_jitter", "reprob", "remode", "recount", "crop_scale", "hflip")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return "none" if value is None else str(value)


def base_lr(cfg: dict) -> float:
    """The lr per 256 images (MAE's ``blr``): ``lr * 256 / batch`` when an absolute lr is set."""
    return cfg["lr"] * 256 / cfg["batch_size"] if cfg["lr"] is not None else cfg["blr"]


def paper_deviations(cfg: dict, protocol: str, arch: str | None = None, k: int | str | None = None) -> list[str]:
    """How a run's resolved ``cfg`` departs from the protocol file's own values for ``arch`` (the
    paper's recipe, every value cited there), as the short phrases of a results row's ``deviations``:
    "cached features (no augmentation)", "epochs 10 < paper 90", "batch 32 < paper 16384",
    "base lr 51.2 != paper 0.1", "mixup 0 != paper 0.8", ..."""
    paper = load_config(protocol, arch, k)
    out = []
    skip = ()
    if recipe(protocol, k) == "linear" and cfg["cache_features"]:
        out.append("cached features (no augmentation)")
        skip = TRAIN_AUGMENTATION_KEYS  # never applied: the cached features are of un-augmented images
    for key, name in (("epochs", "epochs"), ("batch_size", "batch")):
        if cfg[key] != paper[key]:
            out.append(f"{name} {_fmt(cfg[key])} {'<' if cfg[key] < paper[key] else '>'} paper {_fmt(paper[key])}")
    if not math.isclose(base_lr(cfg), base_lr(paper), rel_tol=1e-9):
        out.append(f"base lr {_fmt(base_lr(cfg))} != paper {_fmt(base_lr(paper))}")
    for key in RECIPE_KEYS:
        if key in skip:
            continue
        value, ref = cfg[key], paper[key]
        if isinstance(value, (list, tuple)) and isinstance(ref, (list, tuple)):
            same = len(value) == len(ref) and all(float(a) == float(b) for a, b in zip(value, ref))
        else:
            same = value == ref
        if not same:
            out.append(f"{key} {_fmt(value)} != paper {_fmt(ref)}")
    return out


def apply_overrides(cfg: dict, overrides: dict | None, where: str = "overrides") -> dict:
    """``cfg`` with the values of ``overrides`` (a search point: ``{'lr': 0.01, 'weight_decay': 0.05}``),
    each checked like a config file's key (unknown keys and wrong types are a one-line BenchError)."""
    if not overrides:
        return cfg
    if not isinstance(overrides, dict):
        raise BenchError(f"{where}: must map config keys to values, got {overrides!r:.60}")
    for key, value in overrides.items():
        if key in FILE_ONLY_KEYS or key in ("protocol", "sweep"):
            raise BenchError(f"{where}: key {key!r} cannot be overridden per run")
        cfg[key] = _check_value(key, value, where)
    _check_semantics(cfg, where)
    return cfg
