"""Small checks of suite values, and the YAML reader that refuses duplicate keys and alias bombs."""

from __future__ import annotations

import inspect
import math
import re
from typing import Any, Callable

import yaml

from backbones.vit import arch_config
from bench.core.errors import BenchError

# Bounds on what a small file may ask for: a YAML alias bomb, or a typo such as seeds: [0..1e6],
# must end in one line, not in hours of cells or gigabytes of error message.
MAX_YAML_VALUES = 20_000  # scalars, lists and mappings after expanding aliases
MAX_SEEDS = 64
MAX_QUOTE = 80  # characters of a value quoted in a message
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently),
    and a document that expands (through aliases) to more than ``MAX_YAML_VALUES`` values or
    refers to itself: aliases share one node, but every walk over the result expands them."""

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, {})
        return node


def _expanded_size(node, sizes: dict) -> int:
    """Number of values ``node`` stands for once aliases are expanded; raises past the bound.
    ``sizes``: node id -> size (None while being counted: a node inside itself)."""
    if id(node) in sizes:
        if sizes[id(node)] is None:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to a value that contains it", node.start_mark
            )
        return sizes[id(node)]
    sizes[id(node)] = None
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(n, sizes) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    if size > MAX_YAML_VALUES:
        raise yaml.composer.ComposerError(
            None,
            None,
            f"the document expands to more than {MAX_YAML_VALUES} values (through aliases?)",
            node.start_mark,
        )
    sizes[id(node)] = size
    return size


def _quote(value: Any) -> str:
    """``repr(value)``, cut to ``MAX_QUOTE`` characters: messages quote user values, and a value
    may be huge. Containers are not repr'd whole first (an alias bomb would expand here)."""
    if isinstance(value, (list, tuple, dict, set)):
        text, _ = _short_repr(value, MAX_QUOTE + 1)
    else:
        text = (
            repr(value) if not isinstance(value, str) or len(value) <= 4 * MAX_QUOTE else repr(value[: MAX_QUOTE + 1])
        )
    return text if len(text) <= MAX_QUOTE else text[: MAX_QUOTE - 3] + "..."


def _short_repr(value: Any, budget: int) -> tuple[str, int]:
    """repr of ``value`` up to about ``budget`` characters; returns (text, budget left)."""
    if isinstance(value, (list, tuple, set)):
        items = list(value) if not isinstance(value, set) else sorted(value, key=repr)
        opened, closed = ("[", "]") if isinstance(value, list) else ("(", ")")
        parts = []
        for item in items:
            if budget <= 0:
                parts.append("...")
                break
            text, budget = _short_repr(item, budget)
            parts.append(text)
            budget -= 2
        return opened + ", ".join(parts) + closed, budget
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            if budget <= 0:
                parts.append("...")
                break
            kt, budget = _short_repr(k, budget)
            vt, budget = _short_repr(v, budget)
            parts.append(f"{kt}: {vt}")
            budget -= 2
        return "{" + ", ".join(parts) + "}", budget
    text = _quote(value) if not isinstance(value, (list, tuple, dict, set)) else "..."
    return text, budget - len(text)


def _construct_unique_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (list, dict, set)):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value, not a list or mapping", key_node.start_mark
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {_quote(key)} is given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _mapping(value: Any, where: str, what: str) -> dict:
    if not isinstance(value, dict):
        raise BenchError(f"{where}: {what} must be a mapping (key: value lines), got {type(value).__name__}")
    return value


def _known_keys(spec: dict, allowed, where: str, prefix: str) -> None:
    for name in spec:
        if name not in allowed:
            at = f"{prefix}.{name}" if prefix else str(name)
            raise BenchError(f"{where}: unknown key {_quote(at)}; allowed: {', '.join(allowed)}")


def _string(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BenchError(f"{where}: key {_quote(key)} must be a non-empty string, got {_quote(value)}")
    return value


def _label(value: Any, where: str, section: str) -> str:
    if not isinstance(value, str) or not LABEL_RE.fullmatch(value):
        raise BenchError(
            f"{where}: key {_quote(f'{section}.{value}')}: labels may hold only letters, "
            "digits, '_', '.' and '-' (they name cells and folders)"
        )
    return value


def _seeds(value: Any, where: str, what: str) -> tuple[int, ...]:
    if isinstance(value, list) and len(value) > MAX_SEEDS:
        raise BenchError(f"{where}: {what} has {len(value)} seeds; at most {MAX_SEEDS}")
    if not (isinstance(value, list) and value and all(_is_int(s) and s >= 0 for s in value)):
        raise BenchError(f"{where}: {what} must be a non-empty list of integers >= 0, got {_quote(value)}")
    if len(set(value)) != len(value):
        raise BenchError(f"{where}: {what} lists a seed twice: {_quote(value)}")
    return tuple(value)


def _positive_int(spec: dict, name: str, where: str, key: str) -> int | None:
    value = spec.get(name)
    if value is not None and not (_is_int(value) and value > 0):
        raise BenchError(f"{where}: key {key}.{name} must be a positive integer, got {_quote(value)}")
    return value


def _finite(value: Any) -> bool:
    """No inf / nan anywhere in a (checked, shallow) plain value: '.inf' epochs or steps would
    stop the cell late or never."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def _plain(value: Any, depth: int) -> bool:
    """A YAML scalar, or (``depth`` levels of) lists / mappings of them."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if depth == 0:
        return False
    if isinstance(value, list):
        return all(_plain(v, depth - 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth - 1) for k, v in value.items())
    return False


def _kind_of(default: Any) -> str | None:
    """What a generator parameter takes, judged by its default (None: anything)."""
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, (tuple, list)) and all(_is_int(v) for v in default):
        return "a list of integers"
    return None


def _is_kind(value: Any, kind: str) -> bool:
    return {
        "true or false": lambda: isinstance(value, bool),
        "an integer": lambda: _is_int(value),
        "a number": lambda: _is_number(value),
        "a list of integers": lambda: isinstance(value, list) and all(_is_int(v) for v in value),
    }[kind]()


def _param_default(fn: Callable, name: str):
    return inspect.signature(fn).parameters[name].default


def _arch_depth(arch: str) -> int:
    return int(arch_config(arch)["depth"])
