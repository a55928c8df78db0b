"""teachcompute_ext.nn.Embedding and EmbeddingBag: subclasses of torch.nn's, so
the constructor (from_pretrained too), the initialization and the state_dict
are torch's own; only forward runs our ops."""

import torch

from ..ops.embedding import embedding, embedding_bag


def _refuse(name, max_norm, scale_grad_by_freq, sparse):
    if max_norm is not None or scale_grad_by_freq or sparse:
        raise NotImplementedError(
            f"teachcompute_ext.nn.{name}: max_norm, scale_grad_by_freq and sparse are not "
            "supported (use torch.nn." + name + ")"
        )


class Embedding(torch.nn.Embedding):
    """torch.nn.Embedding whose forward is teachcompute_ext.embedding."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _refuse("Embedding", self.max_norm, self.scale_grad_by_freq, self.sparse)

    def forward(self, input):
        return embedding(self.weight, input, self.padding_idx)


class EmbeddingBag(torch.nn.EmbeddingBag):
    """torch.nn.EmbeddingBag whose forward is teachcompute_ext.embedding_bag."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _refuse("EmbeddingBag", self.max_norm, self.scale_grad_by_freq, self.sparse)

    def forward(self, input, offsets=None, per_sample_weights=None):
        return embedding_bag(
            self.weight, input, offsets, self.mode, per_sample_weights, self.padding_idx, self.include_last_offset
        )
