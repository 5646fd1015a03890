"""Peer of ROBE's table form: the array as one flat parameter, each element gathered by index and
signed, bags pooled with `index_add`, trained by a dense optimiser (what a plain-PyTorch ROBE
looks like, and how `RobeEmbedding` trained before its array became a TorchRec table)."""

from __future__ import annotations

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from embedding.methods import RobeEmbedding
from embedding.methods._ops import jagged, pool


class GatherRobe(nn.Module):
    """Same positions and signs as `method` (its hashes), its array copied into a flat parameter."""

    def __init__(self, method: RobeEmbedding) -> None:
        super().__init__()
        self.method = method
        self.weight = nn.Parameter(method.array.detach().clone())

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        bags = jagged(features, self.method.schema)
        out = []
        for name, bag in bags.items():
            idx, sign = self.method.indices(name, bag.values())
            vectors = self.weight[idx] if sign is None else self.weight[idx] * sign
            out.append(pool(vectors, bag.lengths()))
        return torch.cat(out, dim=1)
