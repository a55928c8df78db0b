"""teachcompute_ext.nn.Embedding and EmbeddingBag: subclasses of torch.nn's, so
the constructor (from_pretrained too), the initialization and the state_dict
are torch's own; only forward runs our ops.

With ``optimizer=`` the table is trained by its own optimizer, fused with the
backward: ``loss.backward()`` updates, in place and once each, the rows the
batch used (``embedding_bag_update_`` / ``embedding_update_``), and the table's
gradient is never built (its ``.grad`` stays None; the rest of the model keeps its
usual optimizer, which skips the table). A dense optimizer reads and writes every
row every step: AdamW over a 1,000,000 x 64 table moves about 1.5 GB a step for
the few hundred rows a batch of 32 touches."""

import dataclasses

import torch
import torch.distributed as dist

from ..ops.embedding import OPTIMIZERS, embedding, embedding_bag, state_dtype, state_shapes

_ops = torch.ops.teachcompute_ext


def _refuse(name, max_norm, scale_grad_by_freq, sparse):
    if max_norm is not None or scale_grad_by_freq or sparse:
        raise NotImplementedError(
            f"teachcompute_ext.nn.{name}: max_norm, scale_grad_by_freq and sparse are not "
            "supported (use torch.nn." + name + ")"
        )


@dataclasses.dataclass
class RowOptimizerConfig:
    """What ``optimizer=`` takes (or a dict of these fields, or just the name): the optimizer
    applied to each row a batch touched, during the backward (csrc/embedding/embedding.h
    has the formulas). sgd (weight decay as L2), rowwise_adagrad (one accumulator per row,
    FBGEMM's EXACT_ROWWISE_ADAGRAD), adagrad (torch.optim.Adagrad), adam (lazy: the moments
    of the touched rows only, as torch.optim.SparseAdam; weight decay as L2) and adamw (the
    same with AdamW's decoupled decay, on the touched rows)."""

    name: str = "adam"
    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0


class RowOptimizer(torch.optim.Optimizer):
    """The hyperparameters of a table trained during the backward, as a torch Optimizer over
    that table: learning-rate schedulers drive it (``StepLR(bag.optimizer, ...)``), and
    ``param_groups[0]["lr"]`` may be changed between steps. Its ``step()`` does nothing:
    the rows are updated in the backward; the optimizer's state lives in the module (and its
    state_dict)."""

    def __init__(self, params, name="adam", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if name not in OPTIMIZERS:
            raise ValueError(
                f"teachcompute_ext.nn: unknown optimizer '{name}' (expected one of {', '.join(OPTIMIZERS)})"
            )
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.name = name

    @torch.no_grad()
    def step(self, closure=None):
        return closure() if closure is not None else None


def _config(optimizer):
    if isinstance(optimizer, str):
        return RowOptimizerConfig(optimizer)
    if isinstance(optimizer, dict):
        return RowOptimizerConfig(**optimizer)
    if isinstance(optimizer, RowOptimizerConfig):
        return optimizer
    raise TypeError(
        "teachcompute_ext.nn: 'optimizer' must be a name, a dict or a RowOptimizerConfig, got "
        f"{type(optimizer).__name__}"
    )


def _gather_rows(t, group):
    """Every rank's t (any length along dim 0, the other dims equal) concatenated in rank order."""
    world = dist.get_world_size(group)
    n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.int64)
    sizes = [torch.empty_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    sizes = [int(s) for s in sizes]
    padded = t.new_zeros((max(sizes),) + tuple(t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]), sizes


class _FusedTable:
    """What Embedding and EmbeddingBag share with optimizer=: the optimizer, its state, the step
    count, the distributed gather and the state_dict entries."""

    def _init_fused(self, optimizer, process_group):
        self._fused = optimizer is not None
        if not self._fused:
            return
        cfg = _config(optimizer)
        self.weight.requires_grad_(False)  # no dense gradient, and the model's optimizer skips it
        self.optimizer = RowOptimizer([self.weight], cfg.name, cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay)
        self._process_group = process_group
        self._reset_state()

    def _reset_state(self):
        s1, s2 = state_shapes(self.optimizer.name, self.weight.shape[0], self.weight.shape[1])
        opts = dict(device=self.weight.device, dtype=state_dtype(self.weight.dtype))
        self._state1, self._state2 = torch.zeros(s1, **opts), torch.zeros(s2, **opts)
        self._step = 0

    def _group(self):
        """The process group whose ranks share the table: every rank of torch.distributed's default
        group when it runs more than one (as DDP), else None (this process alone)."""
        if self._process_group is not None:
            return self._process_group
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return dist.group.WORLD
        return None

    def _hyper(self):
        g = self.optimizer.param_groups[0]
        self._step += 1
        return dict(
            optimizer=self.optimizer.name,
            lr=float(g["lr"]),
            beta1=float(g["betas"][0]),
            beta2=float(g["betas"][1]),
            eps=float(g["eps"]),
            weight_decay=float(g["weight_decay"]),
            step=self._step,
        )

    # The optimizer's state follows the module (device, dtype) and is part of its state_dict,
    # as extra state: a buffer would be broadcast by DDP at every forward.
    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if getattr(self, "_fused", False):
            opts = dict(device=self.weight.device, dtype=state_dtype(self.weight.dtype))
            self._state1, self._state2 = self._state1.to(**opts), self._state2.to(**opts)
        return out

    # Saved as the module's extra state (its key is torch's "_extra_state"), written only with
    # optimizer=: without it the state_dict is exactly torch.nn's.
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if getattr(self, "_fused", False):
            destination[prefix + "_extra_state"] = {
                "optimizer": self.optimizer.name,
                "step": self._step,
                "state1": self._state1 if keep_vars else self._state1.detach(),
                "state2": self._state2 if keep_vars else self._state2.detach(),
            }

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if not getattr(self, "_fused", False):
            return
        key = prefix + "_extra_state"
        if key in unexpected_keys:
            unexpected_keys.remove(key)  # the optimizer's state, read here
        state = state_dict.get(key)
        if state is None:
            self._reset_state()  # a state_dict of torch.nn's module: the optimizer starts afresh
            return
        if state["optimizer"] != self.optimizer.name:
            error_msgs.append(
                f"teachcompute_ext.nn: the state_dict holds the state of optimizer '{state['optimizer']}', "
                f"this module's is '{self.optimizer.name}'"
            )
            return
        with torch.no_grad():
            self._state1.copy_(state["state1"])
            self._state2.copy_(state["state2"])
        self._step = int(state["step"])


def _refuse_fused(what):
    raise NotImplementedError(
        f"teachcompute_ext.nn.EmbeddingBag/Embedding with optimizer=: {what} is not supported (the table is "
        "updated in place during the first-order backward)"
    )


class _FusedBagFunction(torch.autograd.Function):
    """The bags; the backward updates the table (and returns per_sample_weights' gradient)."""

    # forward(ctx, ...), not forward + setup_context: the latter binds its arguments through
    # inspect.signature at every call (40 us of a 110 us step of one bag).
    @staticmethod
    def forward(ctx, trigger, module, indices, offsets, psw):
        out, argmax = _ops.embedding_bag_forward.default(
            module.weight, indices, offsets, module.mode, psw, module.padding_idx, module.include_last_offset
        )
        ctx.module = module
        ctx.save_for_backward(indices, offsets, argmax, psw)
        ctx.mark_non_differentiable(argmax)
        return out, argmax

    @staticmethod
    def backward(ctx, grad, _):
        if torch.is_grad_enabled():
            _refuse_fused("double backward (create_graph=True)")
        m = ctx.module
        indices, offsets, argmax, psw = ctx.saved_tensors
        psw_grad = psw is not None and ctx.needs_input_grad[4]
        grad = grad.contiguous()
        group = m._group()
        local = None
        if group is not None:
            # Every rank's bags, so that every rank applies the same update: the table stays
            # identical everywhere. Contributions averaged over the ranks, as DDP averages gradients.
            world = dist.get_world_size(group)
            offsets, indices, argmax, psw, local = _gather_bags(m, indices, offsets, argmax, psw, group)
            grad, _ = _gather_rows(grad, group)
            grad = grad / world
        gpsw = _ops.embedding_bag_update_.default(
            m.weight,
            m._state1,
            m._state2,
            grad,
            indices,
            offsets,
            argmax,
            m.mode,
            psw,
            m.padding_idx,
            m.include_last_offset,
            psw_grad,
            **m._hyper(),
        )
        if not psw_grad:
            return None, None, None, None, None
        if local is not None:
            gpsw = gpsw[local] * dist.get_world_size(group)
        return None, None, None, None, gpsw

    @staticmethod
    def jvp(ctx, *grads):
        _refuse_fused("forward-mode AD")


def _gather_bags(m, indices, offsets, argmax, psw, group):
    """Every rank's indices, offsets, argmax and per_sample_weights as one batch of bags, and the
    positions of this rank's entries in it (for per_sample_weights' gradient)."""
    rank = dist.get_rank(group)
    two_d = indices.dim() == 2
    idx, sizes = _gather_rows(indices, group)
    start = sum(sizes[:rank])
    local = slice(start, start + sizes[rank])
    if psw is not None:
        psw, _ = _gather_rows(psw, group)
    if m.mode == "max":
        argmax, _ = _gather_rows(argmax, group)
    if two_d:
        return None, idx, argmax, psw, local
    bags = offsets[:-1] if m.include_last_offset else offsets
    # Each rank's bag starts, shifted by the entries of the ranks before it.
    base = torch.tensor(start, device=offsets.device, dtype=offsets.dtype)
    starts, _ = _gather_rows(bags + base, group)
    if m.include_last_offset:
        end = torch.tensor([idx.shape[0]], device=offsets.device, dtype=offsets.dtype)
        starts = torch.cat([starts, end])
    return starts, idx, argmax, psw, local


class _FusedEmbeddingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, trigger, module, indices):
        ctx.module = module
        ctx.save_for_backward(indices)
        return _ops.embedding.default(module.weight, indices, module.padding_idx)

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            _refuse_fused("double backward (create_graph=True)")
        m = ctx.module
        (indices,) = ctx.saved_tensors
        grad = grad.contiguous()
        group = m._group()
        if group is not None:
            world = dist.get_world_size(group)
            dim = grad.shape[-1]
            indices, _ = _gather_rows(indices.reshape(-1), group)
            grad, _ = _gather_rows(grad.reshape(-1, dim), group)
            grad = grad / world
        _ops.embedding_update_.default(m.weight, m._state1, m._state2, grad, indices, m.padding_idx, **m._hyper())
        return None, None, None

    @staticmethod
    def jvp(ctx, *grads):
        _refuse_fused("forward-mode AD")


# The trigger: a tensor that requires grad, so that the backward reaches the module although
# the table does not (as FBGEMM's placeholder_autograd_tensor). Outside torch.compile's
# graphs (a graph break under torch.compile, an error with fullgraph=True): the update reads
# the learning rate and counts the steps in Python at each backward, which a compiled
# backward would freeze into constants.
@torch.compiler.disable
def _fused_bag(module, input, offsets, per_sample_weights):
    _refuse_transforms()
    return _FusedBagFunction.apply(torch.empty(0, requires_grad=True), module, input, offsets, per_sample_weights)[0]


@torch.compiler.disable
def _fused_embedding(module, input):
    _refuse_transforms()
    return _FusedEmbeddingFunction.apply(torch.empty(0, requires_grad=True), module, input)


def _refuse_transforms():
    # vmap, torch.func.grad...: each sample would update the one table, once per sample.
    if torch._C._are_functorch_transforms_active():
        _refuse_fused("vmap and the torch.func transforms")


class Embedding(_FusedTable, torch.nn.Embedding):
    """torch.nn.Embedding whose forward is teachcompute_ext.embedding.

    optimizer (a name, a dict or a RowOptimizerConfig): train the table with its own optimizer,
    fused with the backward (module docstring); process_group: the ranks that share the table
    (default: torch.distributed's default group when it has more than one rank)."""

    def __init__(self, *args, optimizer=None, process_group=None, **kwargs):
        super().__init__(*args, **kwargs)
        _refuse("Embedding", self.max_norm, self.scale_grad_by_freq, self.sparse)
        self._init_fused(optimizer, process_group)

    def forward(self, input):
        if self._fused and torch.is_grad_enabled():
            return _fused_embedding(self, input)
        return embedding(self.weight, input, self.padding_idx)


class EmbeddingBag(_FusedTable, torch.nn.EmbeddingBag):
    """torch.nn.EmbeddingBag whose forward is teachcompute_ext.embedding_bag.

    optimizer, process_group: as for Embedding."""

    def __init__(self, *args, optimizer=None, process_group=None, **kwargs):
        super().__init__(*args, **kwargs)
        _refuse("EmbeddingBag", self.max_norm, self.scale_grad_by_freq, self.sparse)
        self._init_fused(optimizer, process_group)

    def forward(self, input, offsets=None, per_sample_weights=None):
        if self._fused and torch.is_grad_enabled():
            return _fused_bag(self, input, offsets, per_sample_weights)
        return embedding_bag(
            self.weight, input, offsets, self.mode, per_sample_weights, self.padding_idx, self.include_last_offset
        )
