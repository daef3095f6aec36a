"""Loading a suite file: the top level and its inits (``load_suite``)."""

from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path
from typing import Any

import yaml

from backbones.pretrainers.mae import check_target
from backbones.registry import INITS
from backbones.vit import ARCHS
from bench.core.engine import TrainConfig
from bench.core.errors import BenchError, short_repr
from bench.suite.checks import (
    LABEL_RE,
    _arch_depth,
    _finite,
    _is_int,
    _is_number,
    _known_keys,
    _label,
    _mapping,
    _param_default,
    _plain,
    _quote,
    _seeds,
    _string,
    _UniqueKeyLoader,
)
from bench.suite.model import (
    INIT_KEYS,
    MAX_ENTRIES,
    PRETRAIN_COMMON_KEYS,
    PRETRAIN_METHODS,
    PRETRAIN_RESERVED,
    RESERVED_EXTRA,
    RETIRED_KEYS,
    SUITE_KEYS,
    SUITES_DIR,
    InitEntry,
    Suite,
    pretrainer_fn,
)
from bench.suite.tasks import check_equal_grids, init_search, task_entry

# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def bundled_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def resolve_suite_path(name_or_path: str | Path) -> Path:
    """A suite file path, or the name of a bundled suite (``demo`` -> ``bench/suites/demo.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = SUITES_DIR / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    raise BenchError(
        # a path is quoted whole up to 300 characters (a long work-folder path stays readable)
        f"suite {short_repr(str(name_or_path), 300)}: no such file and not a bundled suite "
        f"(bundled: {', '.join(bundled_suites())})"
    )


def load_suite(name_or_path: str | Path) -> Suite:
    """Read and check a suite file (see the module docstring for the format)."""
    path = resolve_suite_path(name_or_path)
    where = str(path)
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except RecursionError:
        raise BenchError(f"{where}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise BenchError(f"{where}: not valid YAML{at}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BenchError(f"{where}: cannot read the suite file ({e})") from None
    doc = _mapping(doc, where, "the suite file")
    for key, why in RETIRED_KEYS.items():
        if key in doc:  # accepted for one release so older suite files still run
            doc.pop(key)
            print(f"note: {where}: key {key!r} is ignored ({why}); remove it", file=sys.stderr)
    _known_keys(doc, SUITE_KEYS, where, "")
    for key in ("name", "seeds", "inits", "tasks"):
        if key not in doc:
            raise BenchError(f"{where}: key {_quote(key)} is required")

    name = _string(doc["name"], where, "name")
    if not LABEL_RE.fullmatch(name):
        raise BenchError(
            f"{where}: key 'name' is {_quote(name)}: a suite name may hold only "
            "letters, digits, '_', '.' and '-' (it names the folder results/<name>)"
        )
    seeds = _seeds(doc["seeds"], where, "key 'seeds'")
    default_arch = _string(doc["arch"], where, "arch") if "arch" in doc else None

    inits_doc = _mapping(doc["inits"], where, "key 'inits'")
    if not inits_doc:
        raise BenchError(f"{where}: key 'inits' is empty; give at least one initialisation")
    inits = tuple(_init_entry(label, spec, default_arch, where) for label, spec in inits_doc.items())

    tasks_doc = _mapping(doc["tasks"], where, "key 'tasks'")
    if not tasks_doc:
        raise BenchError(f"{where}: key 'tasks' is empty; give at least one task")
    for section, entries in (("inits", inits_doc), ("tasks", tasks_doc)):
        if len(entries) > MAX_ENTRIES:
            raise BenchError(f"{where}: key {section!r} has {len(entries)} entries; at most {MAX_ENTRIES}")
    tasks = tuple(task_entry(label, spec, where) for label, spec in tasks_doc.items())
    inits = tuple(init_search(i, inits_doc[i.label], tasks, where) for i in inits)
    check_equal_grids(inits, tasks, where)
    for t in tasks:
        for i in inits:
            if isinstance(t.config, dict) and i.arch not in t.config:
                raise BenchError(
                    f"{where}: key 'tasks.{t.label}.config' has no entry for "
                    f"{i.arch} (init {_quote(i.label)}); given: {', '.join(t.config)}"
                )
            # k must be a block count of every init's ViT
            depth = _arch_depth(i.arch)
            bad = [k for k in t.k if k > depth]
            if bad:
                raise BenchError(
                    f"{where}: key 'tasks.{t.label}.k' has {bad[0]} but init "
                    f"{_quote(i.label)} ({i.arch}) has only {depth} blocks; "
                    f"allowed: 0..{depth}"
                )
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise BenchError(f"{where}: key 'description' must be a string")
    return Suite(name=name, path=path, seeds=seeds, inits=inits, tasks=tasks, description=description.strip())


def _init_entry(label: Any, spec: Any, default_arch: str | None, where: str) -> InitEntry:
    label = _label(label, where, "inits")
    key = f"inits.{label}"
    spec = {} if spec is None else _mapping(spec, where, f"key {_quote(key)}")
    _known_keys(spec, INIT_KEYS, where, key)
    init = spec.get("init", label)
    if not isinstance(init, str) or init not in INITS:
        raise BenchError(
            f"{where}: key {key + ('.init' if 'init' in spec else '')!r}: unknown "
            f"initialisation {_quote(init)}; allowed: {', '.join(INITS)} (or set "
            f"'{key}.init' to one of them)"
        )
    arch = spec.get("arch", default_arch)
    if arch is None:
        raise BenchError(
            f"{where}: key {key + '.arch'!r} is required when the suite has no "
            f"top-level 'arch'; allowed: {', '.join(ARCHS)}"
        )
    if not isinstance(arch, str) or arch not in ARCHS:
        at = f"{key}.arch" if "arch" in spec else "arch"
        raise BenchError(f"{where}: key {_quote(at)}: unknown architecture {_quote(arch)}; allowed: {', '.join(ARCHS)}")
    if "checkpoint" in spec and "pretrain" in spec:
        raise BenchError(f"{where}: key {_quote(key)} has both 'checkpoint' and 'pretrain'; give one")
    checkpoint = None
    if "checkpoint" in spec:
        checkpoint = Path(_string(spec["checkpoint"], where, f"{key}.checkpoint")).expanduser()
    pretrain = None
    if "pretrain" in spec:
        pretrain = _pretrain_spec(spec["pretrain"], init, where, f"{key}.pretrain")
    if checkpoint is None and pretrain is None and INITS[init].needs_checkpoint:
        raise BenchError(
            f"{where}: key {_quote(key)}: initialisation {_quote(init)} needs weights; add "
            f"'checkpoint: PATH' or 'pretrain: {{method: ...}}' (allowed methods: "
            f"{', '.join(PRETRAIN_METHODS)})"
        )
    if INITS[init].converter is None and (checkpoint is not None or pretrain is not None):
        raise BenchError(
            f"{where}: key {_quote(key)}: initialisation {_quote(init)} takes no weights; "
            f"remove 'checkpoint'/'pretrain' or set '{key}.init'"
        )
    trust = spec.get("trust_checkpoint", False)
    if not isinstance(trust, bool):
        raise BenchError(f"{where}: key {key + '.trust_checkpoint'!r} must be true or false")
    extra = _extra(spec, where, key)
    if pretrain is not None and pretrain["method"] == "mae":
        ratio = pretrain.get("mask_ratio", _param_default(pretrainer_fn("mae"), "mask_ratio"))
        if extra.get("mask_ratio", ratio) != ratio:
            raise BenchError(f"{where}: key {key + '.extra.mask_ratio'!r} contradicts '{key}.pretrain.mask_ratio'")
        extra["mask_ratio"] = ratio
    return InitEntry(
        label=label, init=init, arch=arch, checkpoint=checkpoint, pretrain=pretrain, trust_checkpoint=trust, extra=extra
    )


def _extra(spec: dict, where: str, key: str) -> dict:
    """``extra:``: plain values for every row of the init; never a field the run measures or the
    runner writes (``RESERVED_EXTRA``)."""
    extra = _mapping(spec.get("extra", {}), where, f"key {key + '.extra'!r}")
    for name, value in extra.items():
        if isinstance(name, str) and name in RESERVED_EXTRA:
            raise BenchError(
                f"{where}: key {key}.extra.{name}: {name!r} is a field the run measures or the runner writes, "
                f"not a suite's to set (reserved: {', '.join(RESERVED_EXTRA)}); use another name"
            )
        if not isinstance(name, str) or not (value is None or isinstance(value, (str, int, float, bool))):
            raise BenchError(f"{where}: key {key}.extra.{name}: values must be strings, numbers or booleans")
    return dict(extra)


def _pretrain_spec(spec: Any, init: str, where: str, key: str) -> dict:
    spec = _mapping(spec, where, f"key {_quote(key)}")
    method = spec.get("method", init)
    if not isinstance(method, str) or method not in PRETRAIN_METHODS:
        raise BenchError(
            f"{where}: key {key + '.method'!r}: unknown pretraining method "
            f"{_quote(method)}; allowed: {', '.join(PRETRAIN_METHODS)}"
        )
    fn = pretrainer_fn(method)
    own = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind == p.KEYWORD_ONLY and p.name not in PRETRAIN_RESERVED
    ]
    train = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in PRETRAIN_RESERVED]
    allowed = list(dict.fromkeys(PRETRAIN_COMMON_KEYS + tuple(own) + tuple(train)))
    _known_keys(spec, allowed, where, key)
    out = {"method": method}
    for name, value in spec.items():
        if name == "method":
            continue
        if name == "betas":
            if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
                raise BenchError(f"{where}: key {key}.betas must be a list of two numbers")
            value = tuple(float(v) for v in value)
        elif name == "data":
            value = _string(value, where, f"{key}.data")
        elif not _plain(value, depth=2) or not _finite(value):
            raise BenchError(
                f"{where}: key {key}.{name} must be a finite number, string, boolean, or a list or mapping of those"
            )
        out[name] = value  # e.g. BEiT's tokenizer_train: {epochs: 4, blr: 2.0e-3}
    for name in ("steps", "seed", "ckpt_every", "batch_size", "epoch_size", "accum_iter"):
        least = 0 if name in ("steps", "seed", "ckpt_every") else 1
        if name in out and not (_is_int(out[name]) and out[name] >= least):
            raise BenchError(f"{where}: key {key}.{name} must be an integer >= {least}, got {_quote(out[name])}")
    if "mask_ratio" in out and not (_is_number(out["mask_ratio"]) and 0 < out["mask_ratio"] < 1):
        raise BenchError(f"{where}: key {key}.mask_ratio must be in (0, 1), got {_quote(out['mask_ratio'])}")
    if method == "mae" and ("target" in out or "norm_pix_loss" in out):
        try:  # a bad reconstruction target fails here, before anything runs
            check_target(out.get("target"), out.get("norm_pix_loss"))
        except BenchError as e:
            raise BenchError(f"{where}: key {key}.{'target' if 'target' in out else 'norm_pix_loss'}: {e}") from None
    if method == "mae" and "vocab_size" in out and not (_is_int(out["vocab_size"]) and out["vocab_size"] >= 2):
        raise BenchError(f"{where}: key {key}.vocab_size must be an integer >= 2, got {_quote(out['vocab_size'])}")
    return out
