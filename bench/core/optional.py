"""The dense libraries are optional: `make demo`'s light set-up leaves out mmcv's compiled ops,
mmsegmentation, mmdet and detectron2. A command that needs one says so in one line, with the fix."""

from __future__ import annotations

import importlib

from bench.core.errors import BenchError, first_line

DENSE_LIBRARIES = ("mmcv.ops", "mmseg", "mmdet")


def require(command: str, names=DENSE_LIBRARIES) -> None:
    """Raise one ``BenchError`` line saying how to install, unless every module of ``names`` imports."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise BenchError(
                f"{command} needs {name} ({first_line(e)}): the light set-up leaves out the dense libraries; "
                f"run `make setup` (mmcv ops, mmsegmentation, mmdet, detectron2)"
            ) from None
