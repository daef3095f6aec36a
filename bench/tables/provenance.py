"""Whether a row's checkpoint is the one the paper's number was measured from.

A row sits beside a published number unmarked only when its ``provenance`` (bench/core/results.py:
source, data, epochs or steps, target, arch, official, and optionally ``differs``, the known ways an
official file departs from the paper's model) says it is what the paper used: an official release
of the same method pre-trained on ImageNet-1K with the paper's target (supervised baselines were
the paper's own, unreleased runs, so they are always marked). Random init needs no checkpoint. Anything else (no provenance, a self-pretrained or unknown checkpoint, other data) gets
a footnote saying how it differs.
"""

from __future__ import annotations

import re
from typing import Any

from bench.tables.names import backbone_label

# He et al. 2021 compare inits all pre-trained on ImageNet-1K (Tables 3-6, 12); MAE's target is
# the normalised pixels (Table 7's other targets are rows of their own: '<protocol>@<target>').
PAPER_DATA = "ImageNet-1K"
IMAGENET_1K = {"imagenet1k", "in1k", "imagenet1000", "ilsvrc2012", "imagenet2012"}
METHOD_NAMES = {"mae": "MAE", "beit": "BEiT", "mocov3": "MoCo v3", "supervised": "supervised", "dino": "DINO"}
PAPER_TARGET = {"mae": "pixel_norm"}
# The paper's supervised baselines are its own training runs (App. A.2, "our impl."), which were not
# released: an official supervised file (DeiT, timm) is never the paper's checkpoint.
OWN_TRAINING = {"supervised"}


def _norm(text: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


def _target_kind(target: Any) -> str:
    """'token', 'pixel_nonorm' or 'pixel_norm' from a recorded target name."""
    t = _norm(target)
    if "token" in t or "dvae" in t:
        return "token"
    if any(w in t for w in ("nonorm", "unnorm", "withoutnorm", "raw")):
        return "pixel_nonorm"
    return "pixel_norm"


def _amount(provenance: dict) -> str | None:
    for key, unit in (("epochs", "epochs"), ("steps", "steps")):
        value = provenance.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{value:g} {unit}"
    return None


def _not_official(provenance: dict) -> str:
    parts = [str(provenance.get("source") or "self-pretrained")]
    parts += [str(provenance["data"])] if provenance.get("data") else []
    parts += [a for a in [_amount(provenance)] if a]
    return ", ".join(parts) + ": not the paper's checkpoint"


def paper_mismatch(init: str, backbone: str, checkpoint_sha256: Any, provenance: Any, protocol: str) -> str | None:
    """None when the row's checkpoint is what the paper used for ``init``; otherwise the footnote
    that says why its number is not the paper's setting."""
    if init == "random" and not checkpoint_sha256 and not provenance:
        return None  # from scratch, like the paper's random-init rows
    if not isinstance(provenance, dict) or not provenance:
        return "checkpoint provenance not recorded: not known to be the paper's checkpoint"
    if provenance.get("official") is not True:
        return _not_official(provenance)
    who = f"{METHOD_NAMES.get(init, init)} {backbone_label(backbone)}"
    if init in OWN_TRAINING:
        source = provenance.get("source") or "an official release"
        return f"{who} from {source}: the paper trained its own (App. A.2), not released"
    data = provenance.get("data")
    if not data:
        return f"{who}: pre-training data not recorded, paper: {PAPER_DATA}"
    if _norm(data) not in IMAGENET_1K:
        return f"{who} {data}, paper: {PAPER_DATA}"
    expected = protocol.partition("@")[2] or PAPER_TARGET.get(init)
    target = provenance.get("target")
    if expected and target and _target_kind(target) != _target_kind(expected):
        return f"{who} target {target}, paper: {expected}"
    differs = provenance.get("differs")
    if differs:
        text = "; ".join(map(str, differs)) if isinstance(differs, (list, tuple)) else str(differs)
        return f"{who}: {text} (unlike the paper's model)"
    return None
