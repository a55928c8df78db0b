"""Helpers shared by the vmap rules of every family (torch.library.register_vmap).

A rule receives the physical tensors (the batch dim still inside, at in_dims)
and must call our ops once on the whole batch: these helpers move the batch dim
where a rule wants it and translate logical dims to physical ones.
"""

import torch


class Logical:
    """One sample of a batched tensor as the fake kernels' checks see it (shape, dim(), dtype,
    device): a rule runs the op's own checks on the logical arguments, so an error under vmap
    has the words and the shapes it has without vmap, and no tensor is built for it."""

    def __init__(self, t, bdim):
        shape = list(t.shape)
        if bdim is not None:
            del shape[bdim]
        self.shape = torch.Size(shape)
        self.dtype = t.dtype
        self.device = t.device

    def dim(self):
        return len(self.shape)


def logical(t, bdim):
    return t if t is None or bdim is None else Logical(t, bdim)


def batch_index(batch, like):
    """arange(batch) shaped to broadcast against `like` (batch dim first), in like's dtype."""
    return torch.arange(batch, device=like.device, dtype=like.dtype).view(batch, *[1] * (like.dim() - 1))


def flat_rows(idx, rows, batch, allow_negative):
    """Rows `idx` (batch first) of per-sample tables of `rows` rows as rows of the tables
    stacked into one of batch * rows: sample b's row r becomes b * rows + r. An index out of
    range stays out of range (pushed past every valid row, so the op still raises; the value
    it reports is shifted, but for a negative one the op refuses), rather than landing
    silently in a neighbouring sample's table."""
    idx = idx.to(torch.int64)  # batch * rows may not fit the indices' int32
    lo = -rows if allow_negative else 0
    valid = (idx >= lo) & (idx < rows)
    wrapped = torch.where(idx < 0, idx + rows, idx) if allow_negative else idx
    flat = wrapped + batch_index(batch, idx) * rows
    away = batch * rows + 1
    # A negative index the op refuses anyway keeps its value, so the error names it.
    below = idx - away if allow_negative else idx
    return torch.where(valid, flat, torch.where(idx < 0, below, idx + away))


def front(t, bdim):
    """t with its batch dim first; None stays None (unbatched)."""
    if t is None or bdim is None:
        return t
    return t.movedim(bdim, 0)


def front_or_expand(t, bdim, batch):
    """t with a batch dim first: moved when t is batched, an expand (no copy) when it is not."""
    if bdim is not None:
        return t.movedim(bdim, 0)
    return t.expand(batch, *t.shape)


def wrap_dim(d, ndim):
    """A logical dim already checked to lie in [-max(ndim, 1), max(ndim, 1)) as a non-negative one."""
    return d + max(ndim, 1) if d < 0 else d


def register(name, rule):
    torch.library.register_vmap(f"teachcompute_ext::{name}", rule)
