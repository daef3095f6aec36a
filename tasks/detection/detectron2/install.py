"""Whether detectron2 is usable, as one line that says how to install it when it is not."""

from __future__ import annotations

import importlib

from bench.core.errors import BenchError, first_line

D2_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"  # scripts/setup.sh installs this one
HOW = (
    f"run `bash scripts/setup.sh` (it builds detectron2 @ {D2_COMMIT[:7]} from ../shared/vendor/ or "
    f"GitHub), or `pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git@{D2_COMMIT}'`"
)


def require_detectron2() -> None:
    """BenchError (one line) unless ``detectron2`` and its compiled ops ``detectron2._C`` import."""
    try:
        import detectron2  # noqa: F401
    except ImportError as e:
        raise BenchError(f"detectron2 is not installed ({first_line(e)}); {HOW}") from None
    try:
        importlib.import_module("detectron2._C")
    except ImportError as e:
        raise BenchError(
            f"detectron2 was built without its compiled ops (detectron2._C: {first_line(e)}); reinstall it: {HOW}"
        ) from None
