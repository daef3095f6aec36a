"""FSDP2 for the engine (``TrainConfig.fsdp`` under a process group): every ViT block, then the
root, sharded with ``fully_shard``, and back to a plain module after training."""

from __future__ import annotations

import torch
import torch.distributed as dist

_HOOK_DICT_SUFFIXES = ("_hooks", "_hooks_with_kwargs", "_hooks_always_called")


def _hook_dicts(m: torch.nn.Module) -> dict:
    return {k: v for k, v in vars(m).items() if k.endswith(_HOOK_DICT_SUFFIXES) and isinstance(v, dict)}


class FSDPSharding:
    """``fully_shard`` (FSDP2) every ``block_type`` module (``backbones.vit.Block``) of ``model`` (encoder, MAE decoder, both
    MoCo encoders), then ``model`` itself, in place: parameters become ``DTensor`` shards (dim 0 over
    the ranks), gradients are reduce-scattered and the optimizer only ever sees the local shard.
    Parameter names do not change. Rank 0's parameters and buffers are broadcast first (as DDP does).
    ``amp_dtype`` (the autocast dtype, None without it): ``MixedPrecisionPolicy(param_dtype=amp_dtype,
    reduce_dtype=float32)``.

    ``release()`` (a collective) turns the model back into the plain module it was: its original
    parameter objects hold the full trained values on every rank (all-gathered); the classes are
    restored and the hooks and attributes added to the modules since sharding are removed; buffers
    are rank 0's. ``fit`` calls it at the end, so after ``fit`` the caller's model is usable as after
    a DDP run (``export_backbone``, evaluation of each rank's shard). After an exception inside
    ``fit`` the model stays sharded."""

    def __init__(self, model: torch.nn.Module, block_type: type | None = None, amp_dtype: torch.dtype | None = None):
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        self.model = model
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t, 0)
        # what to restore: each module's class, attribute names and hook ids before sharding, and its
        # parameter objects (emptied while sharded, refilled at release: references to them stay valid)
        self._before = {
            m: (type(m), set(vars(m)), {k: set(d) for k, d in _hook_dicts(m).items()}) for m in model.modules()
        }
        self._params = {(m, name): p for m in model.modules() for name, p in m._parameters.items() if p is not None}
        blocks = [m for m in model.modules() if block_type is not None and isinstance(m, block_type)]
        # with autocast on: low-precision all-gathers of the parameters, gradients reduced in fp32
        kw = (
            {}
            if amp_dtype is None
            else {"mp_policy": MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32)}
        )
        for b in blocks:
            fully_shard(b, **kw)
        fully_shard(model, **kw)
        with torch.no_grad():  # FSDP copied its shard; free the full tensors
            for p in self._params.values():
                p.data = p.data.new_empty(0)
        self.n_blocks = len(blocks)
        self.modules = [m for m in model.modules() if isinstance(m, FSDPModule)]

    def reshard(self):
        """Register the sharded parameters everywhere (after a forward without backward the root
        keeps its gathered ones)."""
        for m in self.modules:
            m.reshard()

    def drop_grads(self):
        """Discard the gradients of a skipped step, including those accumulated unsharded under
        ``set_requires_gradient_sync(False)`` (``reset_iter_state`` keeps those)."""
        self.model.reset_iter_state()
        for m in self.modules:
            m.unshard()
        self.model.zero_grad(set_to_none=True)
        self.reshard()

    def full_state(self, opt: torch.optim.Optimizer, order: list[str]) -> tuple[dict, dict]:
        """Collective. On rank 0: the model and optimizer state dicts in the unsharded on-disk format
        of a single process (``state_dict()`` / ``opt.state_dict()``: integer parameter ids); ``{}``
        on the other ranks."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        self.reshard()
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = get_model_state_dict(self.model, options=opts)
        if not opt.state:  # nothing to gather; DCP would first initialise the state with a zero step
            return model_sd, opt.state_dict()
        osd = get_optimizer_state_dict(self.model, opt, options=opts)
        if not osd:
            return model_sd, osd
        ids = {name: i for i, name in enumerate(order)}
        return model_sd, {
            "state": {ids[n]: v for n, v in osd["state"].items()},
            "param_groups": [{**g, "params": [ids[n] for n in g["params"]]} for g in osd["param_groups"]],
        }

    def load(self, model_sd: dict, opt: torch.optim.Optimizer, opt_sd: dict, order: list[str]):
        """Every rank: load a full (single-process format) checkpoint into the shards."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        self.reshard()
        set_model_state_dict(self.model, model_sd, options=StateDictOptions(full_state_dict=True))
        if not opt_sd["state"]:
            opt.load_state_dict(opt_sd)
            return
        fqn = {
            "state": {order[i]: v for i, v in opt_sd["state"].items()},
            "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in opt_sd["param_groups"]],
        }
        # strict=False: a trainable parameter that never had a gradient has no AdamW state
        set_optimizer_state_dict(self.model, opt, fqn, options=StateDictOptions(full_state_dict=True, strict=False))

    @torch.no_grad()
    def release(self):
        """Collective: back to the plain module, full parameters on every rank."""
        from torch.distributed.tensor import DTensor

        self.reshard()
        for m in self.model.modules():  # same order on every rank: one all-gather per parameter
            for name, p in list(m._parameters.items()):
                if isinstance(p, DTensor):
                    orig = self._params[(m, name)]
                    orig.data = p.full_tensor()
                    m._parameters[name] = orig
        for m in self.model.modules():
            cls, attrs, hooks = self._before[m]
            for k, d in _hook_dicts(m).items():
                for hid in [h for h in d if h not in hooks.get(k, ())]:
                    del d[hid]
            for k in [k for k in vars(m) if k not in attrs]:
                del m.__dict__[k]
            m.__class__ = cls
        for b in self.model.buffers():  # each rank ran its own BatchNorm statistics
            dist.broadcast(b, 0)


def local_state_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> dict:
    """Bytes of this rank's parameters and optimizer state tensors (the local shard of a ``DTensor``)."""

    def nbytes(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    out = {"params": sum(nbytes(p) for p in model.parameters()), "optimizer": 0}
    if opt is not None:
        out["optimizer"] = sum(nbytes(v) for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor))
    return out
