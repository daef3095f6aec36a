"""MAE pretraining decays the parameters facebookresearch/mae main_pretrain.py decays.

main_pretrain.py builds its optimizer with ``optim_factory.add_weight_decay(model_without_ddp,
args.weight_decay)`` from timm 0.3.2, without a skip list. That function (quoted in
``official_add_weight_decay`` below; timm >= 0.9 renamed it ``param_groups_weight_decay``) exempts only
1-D parameters and ``*.bias``, so the learned ``cls_token`` (1, 1, D) and ``mask_token`` (1, 1, D_dec)
are decayed, unlike in the fine-tuning recipes, which skip ``model.no_weight_decay()``.
"""

from __future__ import annotations

import torch
from timm.optim import param_groups_weight_decay

from backbones.pretrainers.mae import build_mae, mae_param_groups, pretrain_mae
from bench.core.checkpoint import load_checkpoint_file

torch.set_num_threads(1)
ARCH = "vit_test_patch8"
WD = 0.05


def official_add_weight_decay(model, weight_decay=1e-5, skip_list=()):
    """timm 0.3.2 timm/optim/optim_factory.py add_weight_decay, the function MAE's main_pretrain.py calls."""
    decay = []
    no_decay = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen weights
        if len(param.shape) == 1 or name.endswith(".bias") or name in skip_list:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def names_by_decay(model, groups) -> dict[float, set[str]]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    out: dict[float, set[str]] = {}
    for g in groups:
        out.setdefault(float(g["weight_decay"]), set()).update(name_of[id(p)] for p in g["params"])
    return out


def test_groups_equal_the_official_add_weight_decay_and_timm():
    model = build_mae(ARCH)
    ours = names_by_decay(model, mae_param_groups(model, WD))
    assert ours == names_by_decay(model, official_add_weight_decay(model, WD))
    assert ours == names_by_decay(model, param_groups_weight_decay(model, WD))
    # what the official grouping means for the tokens and the fixed position embeddings
    assert {"cls_token", "mask_token"} <= ours[WD]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "pos_embed" not in trainable and "decoder_pos_embed" not in trainable
    assert ours[WD] | ours[0.0] == trainable and not ours[WD] & ours[0.0]
    # the exempt set is exactly the 1-D parameters (biases, LayerNorm weights)
    dims = {n: p.ndim for n, p in model.named_parameters()}
    assert all(dims[n] == 1 for n in ours[0.0])
    assert all(dims[n] > 1 for n in ours[WD])
    # the transfer recipes' skip list would have exempted the two tokens: that is the difference
    skip = names_by_decay(model, param_groups_weight_decay(model, WD, no_weight_decay_list=model.no_weight_decay()))
    assert ours[WD] - skip[WD] == {"cls_token", "mask_token"}


def test_pretrain_mae_optimizer_uses_the_official_groups(tmp_path):
    """One real pretraining step: the saved AdamW state has the official group sizes and decay values
    (the cls/mask tokens in the decayed group)."""
    torch.manual_seed(0)
    pretrain_mae(
        ARCH, tmp_path, epoch_size=8, batch_size=4, steps=1, lr=1e-3, weight_decay=WD, progress=False, resume=False
    )
    ckpt = load_checkpoint_file(sorted(tmp_path.glob("checkpoint-*.pth"))[-1])
    saved = [(float(g["weight_decay"]), len(g["params"])) for g in ckpt["optimizer"]["param_groups"]]
    model = build_mae(ARCH)
    expected = [(float(g["weight_decay"]), len(g["params"])) for g in official_add_weight_decay(model, WD)]
    assert saved == expected
    n_skip_list = sum(
        1 for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1 and n in model.no_weight_decay()
    )
    assert n_skip_list == 2  # cls_token, mask_token: a skip-list grouping would give other sizes
