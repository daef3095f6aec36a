"""Reading and writing checkpoints safely.

* Loading uses ``torch.load(weights_only=True)`` (tensors and plain containers only). A file that
  needs arbitrary unpickling is refused with a message naming ``--trust-checkpoint``; only then is
  it loaded with ``weights_only=False``. ``.safetensors`` files are read with safetensors.
* Saving writes a temp file in the target folder, fsyncs it and renames it over the target, after
  checking there is room: a kill or a full disk never leaves a half-written checkpoint.
"""
from __future__ import annotations

import pickle
import shutil
import zipfile
from pathlib import Path

import torch

from bench.core.errors import CheckpointError, first_line
from bench.core.io import atomic_open

KNOWN_CONTAINERS = ("model", "state_dict", "module", "model_ema")


def load_checkpoint_file(path: str | Path, trust: bool = False):
    """The object stored in ``path`` (CPU tensors). Raises CheckpointError, one line, naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {first_line(e, limit=300)}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e) and "Weights only load failed" not in str(e):
            raise CheckpointError(f"checkpoint {path} is corrupt: {first_line(e, limit=300)}") from None
        if not trust:
            raise CheckpointError(
                f"checkpoint {path} contains pickled Python objects that need arbitrary code to load; "
                f"if you trust its source, pass --trust-checkpoint") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {first_line(e, limit=300)}") from None
    try:  # trusted by the user
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} could not be loaded even with --trust-checkpoint: {first_line(e, limit=300)}") from None


def unwrap_state_dict(obj, path="checkpoint", containers=KNOWN_CONTAINERS) -> tuple[dict, str]:
    """(state_dict, container key) from ``{'model': sd}``, ``{'state_dict': sd}``, … or a bare sd."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of tensors")
    for key in containers:
        if key in obj and isinstance(obj[key], dict):
            return obj[key], key
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, ""
    keys = list(obj)[:10]
    raise CheckpointError(f"checkpoint {path}: unknown layout, top-level keys {keys}; expected a state dict "
                          f"or one of {list(containers)}")


def load_state_dict_checked(model: torch.nn.Module, sd: dict, path="checkpoint", allow_missing=(), strict=True):
    """``model.load_state_dict`` with one-line errors: the first mismatched key and both shapes,
    or the missing / unexpected keys. ``allow_missing``: key prefixes that may be absent."""
    own = model.state_dict()
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"checkpoint {path}: key {k!r} holds a {type(v).__name__}, not a tensor")
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise CheckpointError(f"checkpoint {path} is for another architecture: key {k!r} has shape "
                                  f"{tuple(v.shape)} in the file but {tuple(own[k].shape)} in the model")
    missing = [k for k in own if k not in sd and not k.startswith(tuple(allow_missing))]
    unexpected = [k for k in sd if k not in own]
    if strict and (missing or unexpected):
        what = []
        if missing:
            what.append(f"missing {len(missing)} key(s) e.g. {missing[:3]}")
        if unexpected:
            what.append(f"unexpected {len(unexpected)} key(s) e.g. {unexpected[:3]}")
        raise CheckpointError(f"checkpoint {path} does not match the model: {'; '.join(what)}")
    model.load_state_dict(sd, strict=False)
    return missing, unexpected


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def check_disk_space(folder: Path, need_bytes: int):
    free = shutil.disk_usage(folder).free
    if free < need_bytes * 1.1 + (16 << 20):
        raise CheckpointError(f"not enough disk space in {folder} to write a checkpoint: need about "
                              f"{need_bytes / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free")


def save_atomic(obj, path: str | Path) -> Path:
    """``torch.save`` (or safetensors for ``.safetensors``) to a temp file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_disk_space(path.parent, _nbytes(obj))
    with atomic_open(path, "wb") as f:
        if path.suffix == ".safetensors":
            from safetensors.torch import save
            f.write(save({k: v.contiguous() for k, v in obj.items()}))
        else:
            torch.save(obj, f)
    return path
