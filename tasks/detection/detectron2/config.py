"""detectron2 LazyConfigs for the COCO runs: reading (a config is code: one outside this package's
``configs/`` needs ``trust_config``), ``KEY=VALUE`` overrides (those naming code need it too), filling
a config for one run, its hashable form and the copy saved in the work dir, which detectron2's own
``LazyConfig.load`` + ``instantiate`` (``tools/lazyconfig_train_net.py --eval-only``) rebuild.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
from pathlib import Path

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.evaluation import COCOEvaluator
from omegaconf import OmegaConf

from backbones.vit import arch_config
from bench.core.errors import BenchError, first_line
from bench.core.workdir import scale_milestones
from tasks.detection.detectron2.backbone import RegistryBackbone
from tasks.detection.detectron2.data import mask_format, registered_coco, split_name
from tasks.detection.protocol import CONFIG_DIRS

CONFIG_DIR = CONFIG_DIRS["detectron2"]
SAVED_CONFIG = "config.yaml"
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


# --------------------------------------------------------------------------------------------------
# Reading, overrides
# --------------------------------------------------------------------------------------------------
def load_lazy_config(path: Path, trust_config: bool = False):
    """``LazyConfig.load`` with one-line errors naming the file; a file outside our configs needs trust."""
    path = Path(path)
    if CONFIG_DIR not in path.resolve().parents and not trust_config:
        # a .py runs when loaded; a .yaml's `_target_`s name any callable, called by instantiate
        raise BenchError(f"{path}: a LazyConfig runs arbitrary code when loaded; if you trust it, pass --trust-config")
    try:
        cfg = LazyConfig.load(str(path))
    except BenchError:
        raise
    except Exception as e:  # syntax errors, failed imports, missing keys of a base config: one line
        raise BenchError(f"{path}: cannot load LazyConfig ({first_line(e, with_type=True)})") from None
    for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"):
        if key not in cfg:
            raise BenchError(f"{path}: LazyConfig has no key '{key}'")
    return cfg


def _literal(raw: str):
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw  # detectron2's apply_overrides keeps such a value as a string too


def names_code(value) -> bool:
    """Whether ``value`` (or a string inside it) is a dotted name whose top-level module is importable
    (``os.system``, ``subprocess.check_call``): detectron2's ``locate`` would import it. Only the
    top-level module is looked up (``find_spec``), nothing is imported."""
    if isinstance(value, str):
        if not _DOTTED.match(value):
            return False
        try:
            return importlib.util.find_spec(value.split(".")[0]) is not None
        except (ImportError, ValueError):
            return False
    if isinstance(value, dict):  # a node with a _target_ is instantiated, whatever the name (undotted
        # builtins such as 'open' or '__import__' resolve too)
        return "_target_" in value or any(names_code(k) or names_code(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return any(names_code(v) for v in value)
    return False


def overrides_naming_code(overrides) -> list[str]:
    """The ``KEY=VALUE`` overrides that create or change a ``_target_``, or whose value names an
    importable object."""
    out = []
    for kv in overrides:
        key, _, raw = kv.partition("=")
        if "_target_" in key.strip().split(".") or names_code(_literal(raw)):
            out.append(kv)
    return out


def apply_overrides(cfg, overrides, path, *, trust_config: bool = False):
    """``LazyConfig.apply_overrides`` after the trust check; one-line errors."""
    overrides = list(overrides)
    if not overrides:
        return cfg
    code = [] if trust_config else overrides_naming_code(overrides)
    if code:
        raise BenchError(
            f"override {' '.join(code)}: names code that detectron2 would import or call (a _target_, or an "
            f"importable object); pass --trust-config if you trust it"
        )
    try:
        return LazyConfig.apply_overrides(cfg, overrides)
    except Exception as e:  # a key that does not exist, a value that does not parse
        raise BenchError(f"{path}: override {overrides}: {first_line(e, with_type=True)}") from None


def override_strings(cfg_options: dict) -> list[str]:
    """``--cfg-options`` / trailing pairs (parsed values) as detectron2's ``key=value`` strings."""
    return [f"{k}={v!r}" for k, v in cfg_options.items()]


# --------------------------------------------------------------------------------------------------
# The backbone node, the hashable form
# --------------------------------------------------------------------------------------------------
def registry_backbone_node(cfg, path) -> tuple[object, str]:
    """The ``L(RegistryBackbone)(...)`` node of ``cfg.model`` and its key."""
    bb = cfg.model.get("backbone")
    for node, key in (
        (bb, "model.backbone"),
        (bb.get("bottom_up") if bb is not None else None, "model.backbone.bottom_up"),
    ):
        if node is not None and node.get("_target_") in (RegistryBackbone, qualname(RegistryBackbone)):
            return node, key
    got = None if bb is None else bb.get("_target_")
    raise BenchError(
        f"{path}: key 'model.backbone' must be L(RegistryBackbone)(...) or an FPN whose bottom_up is one "
        f"(got {plain(got)!r})"
    )


def qualname(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def plain(obj):
    """JSON-able, process-independent form of a config value (callables by qualified name)."""
    if isinstance(obj, functools.partial):
        return {"partial": plain(obj.func), "args": plain(list(obj.args)), "keywords": plain(dict(obj.keywords))}
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if callable(obj) and hasattr(obj, "__qualname__"):
        return qualname(obj)
    return repr(obj)


def config_dict(cfg) -> dict:
    return plain(OmegaConf.to_container(cfg, resolve=False))


def hashable(cfg, node_key: str) -> dict:
    """The config without paths (checkpoint, data files, output folders): the row's config_hash."""
    d = config_dict(cfg)
    node = d
    for k in node_key.split("."):
        node = node.get(k, {})
    node.pop("checkpoint", None), node.pop("trust_checkpoint", None)
    for split in ("train", "test"):
        d["dataloader"][split].pop("dataset", None)
    d["dataloader"].pop("evaluator", None)
    d.get("train", {}).pop("output_dir", None)
    return d


# --------------------------------------------------------------------------------------------------
# Filling a config for one run
# --------------------------------------------------------------------------------------------------
def scale_schedule(cfg, iters: int) -> None:
    """``train.max_iter`` = ``iters`` with the milestones of ``lr_multiplier`` kept at their fraction
    (``bench.core.workdir.scale_milestones``, fvcore's strictly increasing rule); the warm-up is a
    fraction of the schedule in detectron2, so it scales by itself."""
    old = int(cfg.train.max_iter)
    cfg.train.max_iter = int(iters)
    sched = cfg.lr_multiplier.get("scheduler", cfg.lr_multiplier)
    if "milestones" in sched:
        sched.milestones = scale_milestones(sched.milestones, old, int(iters), distinct=True)
    if "num_updates" in sched:
        sched.num_updates = int(iters)


def set_lr_and_depth(cfg, init: str, arch: str, given_lr: bool = False) -> tuple[float, float]:
    """The lr of ``init`` (``lr_by_init``, unless ``optimizer.lr`` was given as an override) and the
    layer decay over this depth; (lr, layer decay)."""
    lr = float(cfg.optimizer.lr if given_lr else cfg.get("lr_by_init", {}).get(init, cfg.optimizer.lr))
    cfg.optimizer.lr = lr
    lff = cfg.optimizer.params.get("lr_factor_func")
    if isinstance(lff, functools.partial) and "num_layers" in lff.keywords:  # layer decay over this depth
        lff = functools.partial(lff.func, *lff.args, **dict(lff.keywords, num_layers=arch_config(arch)["depth"]))
        cfg.optimizer.params.lr_factor_func = lff
    return lr, float(lff.keywords.get("lr_decay_rate", 1.0)) if isinstance(lff, functools.partial) else 1.0


MASK_FORMAT_KEY = "dataloader.train.mapper.instance_mask_format"


def set_data(cfg, data: dict, work_dir, mask_format_given: bool = False) -> dict:
    """Both splits (``data['splits']``, ``protocol.run_data``) as ``registered_coco`` nodes (stable
    names) and COCOEvaluator on the evaluated one; the names. The training masks' format is the
    one the annotations need (``mask_format``) unless an override gave it (``mask_format_given``:
    e.g. 'bitmask' to crop mask targets from image-size bitmaps, as mmdet does)."""
    names = {}
    for split, loader in (("train", "train"), ("val", "test")):
        ann, images = (str(Path(p).resolve()) for p in data["splits"][split])
        names[split] = split_name(split, ann, images)
        cfg.dataloader[loader].dataset = L(registered_coco)(
            names=names[split], json_file=ann, image_root=images, filter_empty=split == "train"
        )
    needed, mapper = mask_format(data["train_ann"]), cfg.dataloader.train.mapper
    given = mapper.instance_mask_format if mask_format_given else needed
    if given not in ("polygon", "bitmask"):
        raise BenchError(f"override {MASK_FORMAT_KEY}={given!r}: choose 'polygon' or 'bitmask'")
    if needed == "bitmask" and given != "bitmask":
        raise BenchError(
            f"override {MASK_FORMAT_KEY}={given!r}: {data['train_ann']} has RLE instance masks (bitmask only)"
        )
    mapper.instance_mask_format = given
    cfg.dataloader.evaluator = L(COCOEvaluator)(
        dataset_name=names["val"], output_dir=str(Path(work_dir) / "inference"), tasks=("bbox", "segm")
    )
    return names


def save_config(cfg, work_dir) -> Path:
    """The run's config as detectron2 saves it (``LazyConfig.save``), in the work dir."""
    path = Path(work_dir) / SAVED_CONFIG
    LazyConfig.save(cfg, str(path))
    return path
