"""Where a checkpoint came from, derived from the file, and whether it is what the paper used.

Every result row carries ``provenance`` (``bench.core.results``), so a table can tell "the official
MAE ViT-B, ImageNet-1K, 1600 epochs" from "our own 100-step MAE on digits" and never puts the second
unmarked beside the paper's number. ``provenance_of`` derives it, in this order:

1. A checkpoint written by ``bench pretrain`` records its own run (method, data, steps, images seen,
   target) under the key ``provenance``; the file's ``train_settings.json`` is read for older ones.
   An MAE run's ``target`` is pixel_norm, pixel or tokens (``reconstruction_target``); a tokens run
   also records ``tokenizer`` (the suite's VQ tokenizer, not the paper's DALL-E dVAE).
2. A known official release (``RELEASES``), identified by its file name and checked against the
   file: releases published with a sha256 prefix in their name (torch-hub style ``-<hex>.pth``: DeiT,
   mmpretrain) must match the file's sha256; the others (MAE, MoCo v3, BEiT publish no checksum) are
   identified by name and their key layout, and say so in ``verified``.
3. Anything else is ``unknown``: a row from it is never matched to a paper number unmarked.

``paper_difference`` compares a provenance with what the paper's Section 5 used for that
initialisation (``PAPER``) and returns the phrase the tables print as a mark, or None.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from bench.core.checkpoint import load_checkpoint_file
from bench.core.errors import BenchError
from bench.core.results import sha256_file


@dataclass(frozen=True)
class Release:
    """One official checkpoint release: a file-name pattern and what it was trained on."""

    pattern: str  # fnmatch pattern of the released file name
    init: str  # our registry's init name
    source: str  # who released it
    data: str
    epochs: int | None
    target: str
    layout: tuple[str, ...] = ()  # state-dict keys (after the release's top-level key) it must hold
    notes: dict = field(default_factory=dict)


RELEASES: tuple[Release, ...] = (
    Release(
        "mae_pretrain_vit_*.pth",
        "mae",
        "facebookresearch/mae",
        "ImageNet-1K",
        1600,
        "normalised pixels",
        ("model/cls_token", "model/blocks.0.attn.qkv.weight"),
    ),
    Release(
        "mae_visualize_vit_*.pth",
        "mae",
        "facebookresearch/mae (visualisation model)",
        "ImageNet-1K",
        1600,
        "pixels",
        ("model/decoder_embed.weight",),
    ),
    Release(
        "mae_vit-*_8xb512-*1600e_in1k_*.pth",
        "mae",
        "open-mmlab/mmpretrain (reproduction)",
        "ImageNet-1K",
        1600,
        "normalised pixels",
        ("state_dict/backbone.cls_token",),
    ),
    Release(
        "deit_*_patch16_224-*.pth",
        "supervised",
        "facebookresearch/deit",
        "ImageNet-1K",
        300,
        "labels (DeiT recipe)",
        ("model/cls_token",),
    ),
    Release(
        "vit-[sb]-300ep.pth.tar",
        "mocov3",
        "facebookresearch/moco-v3",
        "ImageNet-1K",
        300,
        "contrastive (momentum encoder)",
        ("state_dict/module.base_encoder.cls_token",),
    ),
    Release(
        "beit_*_patch16_224_pt22k.pth",
        "beit",
        "microsoft/unilm",
        "ImageNet-22K",
        150,
        "DALL-E tokens",
        ("model/cls_token",),
    ),
    Release(
        "beit_*_patch16_224_pt1k_800ep.pth",
        "beit",
        "microsoft/unilm",
        "ImageNet-1K",
        800,
        "DALL-E tokens",
        ("model/cls_token",),
        {"architecture": "absolute position embedding, no relative bias or layer scale"},
    ),
    Release(
        "model_final_*.pkl",
        "vitdet",
        "facebookresearch/detectron2 ViTDet model zoo (a fine-tuned detector)",
        "COCO, from MAE ImageNet-1K",
        None,
        "detection (fine-tuned)",
        ("model/backbone.net.patch_embed.proj.weight",),
    ),
)

# What Section 5 of the paper transferred, per initialisation (its Tables 3-7 and A.2-A.5).
PAPER: dict[str, dict] = {
    "mae": {"data": "ImageNet-1K", "epochs": 1600, "target": "normalised pixels"},
    "supervised": {"data": "ImageNet-1K", "target": "labels (the paper's own recipe, A.2)"},
    "mocov3": {"data": "ImageNet-1K", "epochs": 300},
    "beit": {"data": "ImageNet-1K", "epochs": 800, "target": "DALL-E tokens"},
}
# MAE's reconstruction targets (the paper's Table 7) as a bench-pretrain run records them; the
# releases' descriptions mapped onto them. The suite's tokens come from its own VQ tokenizer.
TARGETS = ("pixel_norm", "pixel", "tokens")
RELEASE_TARGETS = {"normalised pixels": "pixel_norm", "pixels": "pixel"}
TOKENIZER_NOTE = "suite VQ (not DALL-E dVAE)"
TOKEN_MARK = "tokens from the suite's VQ tokenizer; paper: DALL-E dVAE"
HUB_SUFFIX = re.compile(r"-([0-9a-f]{8,64})\.(pth|pt|pth\.tar)$")


def _self_pretrained(ckpt: dict | None, path: Path) -> dict | None:
    """The run record of a ``bench pretrain`` checkpoint, or None for a file it did not write."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("provenance"), dict):
        return {"source": "self-pretrained", "verified": "its own run record", **ckpt["provenance"]}
    settings = path.parent / "train_settings.json"
    if not (isinstance(ckpt, dict) and ckpt.get("init") and settings.is_file()):
        return None
    try:
        run = json.loads(settings.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(run, dict):
        return None
    steps, batch = run.get("steps"), run.get("batch_size")
    out = {
        "source": "self-pretrained",
        "verified": "its own run record",
        "method": run.get("method", ckpt["init"]),
        "data": run.get("data"),
        "steps": steps,
        "images_seen": steps * batch * run.get("accum_iter", 1) if isinstance(steps, int) and batch else None,
        "img_size": run.get("img_size"),
        "target": _run_target(run, ckpt),
    }
    if out["target"] == "tokens":
        out["tokenizer"] = run.get("tokenizer") or TOKENIZER_NOTE
    return out


def _run_target(run: dict, ckpt: dict) -> str | None:
    """An MAE run's reconstruction target (pixel_norm, pixel, tokens): recorded as ``target``; runs
    from before the key record only ``norm_pix_loss``."""
    target = run.get("target") or ckpt.get("target")
    if isinstance(target, str):
        return target
    norm = run.get("norm_pix_loss")
    return None if not isinstance(norm, bool) else ("pixel_norm" if norm else "pixel")


def reconstruction_target(provenance: dict | None) -> str | None:
    """The MAE reconstruction target of a checkpoint, in the suite's names (``TARGETS``: pixel_norm,
    pixel, tokens), from a self-pretrained run record or an official release; None if not known."""
    target = provenance.get("target") if isinstance(provenance, dict) else None
    return RELEASE_TARGETS.get(target, target if target in TARGETS else None)


def _has_keys(ckpt, layout: tuple[str, ...]) -> bool:
    for key in layout:
        top, _, name = key.partition("/")
        inner = ckpt.get(top) if isinstance(ckpt, dict) else None
        if not isinstance(inner, dict) or name not in inner:
            return False
    return True


def _release(path: Path, sha256: str | None, ckpt) -> dict | None:
    for release in RELEASES:
        if not fnmatch.fnmatch(path.name, release.pattern):
            continue
        hub = HUB_SUFFIX.search(path.name)
        if hub and sha256:
            if not sha256.startswith(hub.group(1)):
                return None  # named like the release, but another file
            verified = f"sha256 prefix {hub.group(1)} in its name"
        elif ckpt is not None and _has_keys(ckpt, release.layout):
            verified = "file name and key layout (no published checksum)"
        else:
            return None
        out = {
            "source": release.source,
            "official": True,
            "init": release.init,
            "data": release.data,
            "epochs": release.epochs,
            "target": release.target,
            "verified": verified,
        }
        return out | release.notes
    return None


def provenance_of(checkpoint: str | Path | None, sha256: str | None = None, ckpt=None) -> dict:
    """Provenance of a checkpoint file. ``sha256`` and ``ckpt`` (its loaded contents), when the caller
    has them, save reading the file again; without them the file is read here."""
    if checkpoint is None:
        return {"source": "random", "verified": "no checkpoint"}
    path = Path(checkpoint)
    if ckpt is None:  # read it here (tensors only) rather than have every task pass its contents
        try:
            ckpt = load_checkpoint_file(path)
        except BenchError:  # unreadable without --trust-checkpoint (e.g. a .pkl): provenance unknown
            ckpt = None
    if sha256 is None and HUB_SUFFIX.search(path.name) and path.is_file():
        sha256 = sha256_file(path)  # only a name that claims a digest needs the file's
    return (
        _self_pretrained(ckpt, path)
        or _release(path, sha256, ckpt)
        or {"source": "unknown", "file": path.name, "verified": "not a known release"}
    )


def paper_difference(provenance: dict | None, init: str) -> str | None:
    """None when ``provenance`` is what the paper used for ``init``, else a short phrase saying how
    it differs (the tables print it as a mark next to the paper's number)."""
    paper = PAPER.get(init)
    if paper is None:
        return None if init == "random" else f"{init}: the paper has no such initialisation"
    if not provenance or provenance.get("source") in ("unknown", None):
        return "checkpoint of unknown provenance"
    if provenance.get("source") == "self-pretrained":
        steps = provenance.get("steps")
        why = f"self-pretrained ({steps} steps on {provenance.get('data')}), not the paper's checkpoint"
        return why + (f"; {TOKEN_MARK}" if provenance.get("target") == "tokens" else "")
    parts = [
        f"{key} {provenance.get(key)} (paper: {want})"
        for key, want in paper.items()
        if provenance.get(key) is not None and provenance.get(key) != want
    ]
    if "architecture" in provenance:
        parts.append(provenance["architecture"])
    if init == "supervised" and provenance.get("target") != paper["target"]:
        parts = [f"{provenance.get('source')} weights, paper: its own supervised recipe (A.2)"]
    return "; ".join(dict.fromkeys(parts)) or None
