"""A suite's task entries and search grids."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from backbones.vit import ARCHS
from bench.core.errors import BenchError
from bench.suite.checks import (
    _finite,
    _is_int,
    _is_kind,
    _is_number,
    _kind_of,
    _known_keys,
    _label,
    _mapping,
    _positive_int,
    _quote,
    _string,
)
from bench.suite.model import (
    MAX_GENERATED_BYTES,
    MAX_GENERATED_COUNT,
    MAX_GENERATED_SIDE,
    MAX_GRID,
    SELECT_ON,
    TASK_COMMON_KEYS,
    InitEntry,
    TaskEntry,
)
from tasks.registry import TASKS, runnable_tasks
from tasks.spec import TaskSpec


def task_entry(label: Any, spec: Any, where: str) -> TaskEntry:
    """One entry of ``tasks:``, checked (see the package docstring for its keys)."""
    label = _label(label, where, "tasks")
    key = f"tasks.{label}"
    spec = {} if spec is None else _mapping(spec, where, f"key {_quote(key)}")
    task = spec.get("task", label)
    runnable = runnable_tasks()
    if not isinstance(task, str) or task not in runnable:
        raise BenchError(
            f"{where}: key {key + ('.task' if 'task' in spec else '')!r}: unknown "
            f"task {_quote(task)}; allowed: {', '.join(runnable)} (or set '{key}.task')"
        )
    declared = TASKS[task]
    _known_keys(spec, TASK_COMMON_KEYS + declared.suite_keys, where, key)
    protocol = spec.get("protocol", declared.protocols[0])
    if not isinstance(protocol, str) or protocol not in declared.protocols:
        raise BenchError(
            f"{where}: key {key + '.protocol'!r}: protocol {_quote(protocol)} is not one "
            f"of {task}'s; allowed: {', '.join(declared.protocols)}"
        )
    if ("data" in spec) == ("generate" in spec):
        raise BenchError(
            f"{where}: key {_quote(key)} needs exactly one of 'data' (a dataset on disk) "
            "and 'generate' (make the small generated set)"
        )
    data = Path(_string(spec["data"], where, f"{key}.data")).expanduser() if "data" in spec else None
    epochs = spec.get("epochs")
    if epochs is not None and not (_is_number(epochs) and 0 < epochs < math.inf):
        raise BenchError(f"{where}: key {key}.epochs must be a positive number, got {_quote(epochs)}")
    select_on = spec.get("select_on", "heldout")
    if not isinstance(select_on, str) or select_on not in SELECT_ON:
        raise BenchError(f"{where}: key {key}.select_on is {_quote(select_on)}; allowed: {', '.join(SELECT_ON)}")
    engine = spec.get("engine")
    if engine is not None and (not isinstance(engine, str) or engine not in declared.engines):
        raise BenchError(
            f"{where}: key {key}.engine is {_quote(engine)}; allowed: "
            f"{', '.join(declared.engines) or 'none (this task has one engine)'}"
        )
    reason = spec.get("unequal_grid_reason")
    floors = _flag(spec, "floors", where, key) if "floors" in spec else None
    if floors and declared.family != "classification":
        raise BenchError(f"{where}: key {key}.floors: raw-pixel floors are for classification tasks only")
    return TaskEntry(
        label=label,
        task=task,
        protocol=protocol,
        data=data,
        generate=_generate(spec, declared, where, key),
        config=_config(spec, where, key),
        iters=_positive_int(spec, "iters", where, key),
        epochs=None if epochs is None else float(epochs),
        batch_size=_positive_int(spec, "batch_size", where, key),
        k=_k(spec, protocol, where, key),
        amp=_amp(spec, where, key),
        trust_config=_flag(spec, "trust_config", where, key),
        search=_grid(spec["search"], declared, select_on, where, f"{key}.search") if "search" in spec else None,
        select_on=select_on,
        engine=engine,
        unequal_grid_reason=None if reason is None else _string(reason, where, f"{key}.unequal_grid_reason"),
        floors=floors,
        eval_every=_positive_int(spec, "eval_every", where, key),
    )


def _flag(spec: dict, name: str, where: str, key: str) -> bool:
    value = spec.get(name, False)
    if not isinstance(value, bool):
        raise BenchError(f"{where}: key {key}.{name} must be true or false")
    return value


def _amp(spec: dict, where: str, key: str) -> bool:
    """Suite key ``amp``, or its old name ``bf16`` (both given: they must agree)."""
    amp, bf16 = _flag(spec, "amp", where, key), _flag(spec, "bf16", where, key)
    if "amp" in spec and "bf16" in spec and amp != bf16:
        raise BenchError(f"{where}: key {key}.bf16 contradicts '{key}.amp' (bf16 is the old name of amp; give one)")
    return amp or bf16


def _config(spec: dict, where: str, key: str) -> str | dict | None:
    """A config name or file, or one per architecture ``{arch: config}``."""
    if isinstance(spec.get("config"), dict):
        _known_keys(spec["config"], ARCHS, where, f"{key}.config")
        return {arch: _string(v, where, f"{key}.config.{arch}") for arch, v in spec["config"].items()}
    return _string(spec["config"], where, f"{key}.config") if "config" in spec else None


def _k(spec: dict, protocol: str, where: str, key: str) -> tuple[int, ...]:
    """Protocol 'partial': the numbers of fine-tuned last blocks."""
    if protocol != "partial":
        if "k" in spec:
            raise BenchError(
                f"{where}: key {key + '.k'!r} is only for protocol 'partial' (this task's protocol is {_quote(protocol)})"
            )
        return ()
    raw = spec.get("k")
    if not (isinstance(raw, list) and raw and all(_is_int(v) and v >= 0 for v in raw)):
        raise BenchError(
            f"{where}: key {key + '.k'!r} is required for protocol 'partial': a "
            "list of numbers of fine-tuned blocks, e.g. [0, 1, 2, 4]"
        )
    if len(set(raw)) != len(raw):
        raise BenchError(f"{where}: key {key}.k lists a value twice: {_quote(raw)}")
    return tuple(raw)


def _generate(spec: dict, declared: TaskSpec, where: str, key: str) -> dict | None:
    """``generate:``: the generator's options, typed by their defaults and bounded in size."""
    if "generate" not in spec:
        return None
    generate = _mapping(spec["generate"], where, f"key {key + '.generate'!r}")
    params = declared.generator_options()
    _known_keys(generate, list(params), where, f"{key}.generate")
    for name, value in generate.items():  # the type of each parameter's default
        kind = _kind_of(params[name].default)
        if (kind and not _is_kind(value, kind)) or not _finite(value):
            raise BenchError(f"{where}: key {key}.generate.{name} must be {kind}, got {_quote(value)}")
    _check_generated_size(generate, params, where, f"{key}.generate")
    return {name: (tuple(v) if isinstance(v, list) else v) for name, v in generate.items()}


def _check_generated_size(generate: dict, params: dict, where: str, key: str) -> None:
    """Bounds of a generated set, before anything is made: each side at most
    ``MAX_GENERATED_SIDE`` px, each count at most ``MAX_GENERATED_COUNT``, and the images' bytes
    (count x height x width x 3) at most ``MAX_GENERATED_BYTES``."""
    given = {name: p.default for name, p in params.items()} | generate
    for name, value in generate.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if name == "seed" or isinstance(value, bool) or not all(_is_int(v) for v in values):
            continue
        if "size" in name and not all(1 <= v <= MAX_GENERATED_SIDE for v in values):
            raise BenchError(f"{where}: key {key}.{name} is {_quote(value)}; allowed: 1 to {MAX_GENERATED_SIDE}")
        if "size" not in name and any(v > MAX_GENERATED_COUNT for v in values):
            raise BenchError(f"{where}: key {key}.{name} is {_quote(value)}; at most {MAX_GENERATED_COUNT}")
    side = given.get("image_size")
    if side is None:
        return  # the generator's own size (e.g. digits' 8 x 8 scans)
    height, width = (side, side) if _is_int(side) else tuple(side)[:2]
    count = sum(given.get(n) or 0 for n in ("n_train", "n_val"))
    count += sum(given.get(n) or 0 for n in ("n_train_per_class", "n_val_per_class")) * (given.get("num_classes") or 1)
    size = count * height * width * 3
    if size > MAX_GENERATED_BYTES:
        raise BenchError(
            f"{where}: key {key} asks for {count} images of {height} x {width} px, about {size / 2**30:.1f} GiB; "
            f"at most {MAX_GENERATED_BYTES / 2**30:.0f} GiB: generate fewer or smaller images"
        )


def init_search(init: InitEntry, spec: Any, tasks: tuple[TaskEntry, ...], where: str) -> InitEntry:
    """``inits.<label>.search: {<task label>: grid}``: this init's own grid for those tasks."""
    if not isinstance(spec, dict) or "search" not in spec:
        return init
    key = f"inits.{init.label}.search"
    grids = _mapping(spec["search"], where, f"key {key!r}")
    by_label = {t.label: t for t in tasks}
    _known_keys(grids, list(by_label), where, key)
    search = {
        label: _grid(grid, by_label[label].spec, by_label[label].select_on, where, f"{key}.{label}")
        for label, grid in grids.items()
    }
    return dataclasses.replace(init, search=search)


def check_equal_grids(inits: tuple[InitEntry, ...], tasks: tuple[TaskEntry, ...], where: str) -> None:
    """Every init of a task searches the same grid (the same budget: the paper searched each entry
    alike), unless the task says why not in ``unequal_grid_reason``."""
    for t in tasks:
        if t.unequal_grid_reason is not None:
            continue
        grids = [(i.label, _grid_key(i.search.get(t.label, t.search))) for i in inits]
        for label, grid in grids[1:]:
            if grid != grids[0][1]:
                raise BenchError(
                    f"{where}: key 'inits.{label}.search.{t.label}': init {label!r} searches another grid "
                    f"for task {t.label!r} than init {grids[0][0]!r} ({_describe(grid)} vs "
                    f"{_describe(grids[0][1])}); give every init the same grid, or say why in "
                    f"'tasks.{t.label}.unequal_grid_reason'"
                )


def _grid_key(grid: dict | None) -> tuple:
    """A grid as a comparable value: names and their sets of values, order aside."""
    return tuple(sorted((name, tuple(sorted(map(repr, values)))) for name, values in (grid or {}).items()))


def _describe(key: tuple) -> str:
    if not key:
        return "no search"
    return "; ".join(f"{name} [{', '.join(values)}]" for name, values in key)


def _grid(value: Any, declared: TaskSpec, select_on: str, where: str, key: str) -> dict:
    """A search grid ``{hyperparameter: [values]}``, checked against what the task can vary."""
    grid = _mapping(value, where, f"key {key!r}")
    if not declared.search_keys:
        raise BenchError(f"{where}: key {key!r}: task {declared.name!r} has no hyperparameters to search")
    if not grid:
        raise BenchError(f"{where}: key {key!r} is empty; give e.g. {{{declared.search_keys[0]}: [a, b]}}")
    _known_keys(grid, declared.search_keys, where, key)
    if select_on == "heldout" and not declared.heldout:
        raise BenchError(
            f"{where}: key {key!r}: selecting on a held-out part of the training set "
            f"is not implemented for task {declared.name!r}; set 'select_on: val' "
            "(the rows then say 'selected on val')"
        )
    out, points = {}, 1
    for name, values in grid.items():
        if not (
            isinstance(values, list)
            and values
            and all(isinstance(v, (str, bool)) or (_is_number(v) and math.isfinite(v)) for v in values)
        ):
            raise BenchError(
                f"{where}: key {key}.{name} must be a non-empty list of finite "
                f"numbers (or strings), got {_quote(values)}"
            )
        if len(set(map(repr, values))) != len(values):
            raise BenchError(f"{where}: key {key}.{name} lists a value twice: {_quote(values)}")
        points *= len(values)
        if points > MAX_GRID:
            raise BenchError(f"{where}: key {key!r} has more than {MAX_GRID} points; search fewer values")
        out[name] = tuple(values)
    return out
