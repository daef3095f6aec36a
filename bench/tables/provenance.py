"""Whether a row's checkpoint is the one the paper's number was measured from, as a footnote.

The rule lives with the checkpoints (``backbones.provenance.paper_difference``: an official release
with the paper's data, epochs and target; never a self-pretrained, unknown or unrecorded checkpoint;
random init needs none). Here it becomes the footnote of a cell that sits beside a paper number.
"""

from __future__ import annotations

from typing import Any

from backbones.provenance import paper_difference
from bench.tables.names import backbone_label

METHOD_NAMES = {"mae": "MAE", "beit": "BEiT", "mocov3": "MoCo v3", "supervised": "supervised", "dino": "DINO"}


def paper_mismatch(init: str, backbone: str, provenance: Any) -> str | None:
    """None when the row's checkpoint is what the paper used for ``init``; otherwise the footnote,
    e.g. 'BEiT ViT-L: data ImageNet-22K (paper: ImageNet-1K); epochs 150 (paper: 800)'."""
    why = paper_difference(provenance if isinstance(provenance, dict) else None, init)
    if why is None:
        return None
    return f"{METHOD_NAMES.get(init, init)} {backbone_label(backbone)}: {why}"
