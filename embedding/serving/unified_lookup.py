"""Unified-embedding lookups at serving: fingerprints -> pooled rows in one hash call and one kernel call.

`UnifiedEmbedding.forward` on the served model goes fingerprints -> routed KeyedJaggedTensor ->
`QuantEmbeddingBags` (a KJT permute per call) -> KeyedTensor -> split per feature -> cat: some 40
TorchRec and torch calls around the one fbgemm kernel that does the work. `UnifiedLookup` hashes and
routes with the method's own numpy code (`rows_numpy`, `route_rows`), hands the routed rows to the
same fbgemm kernel as plain indices and offsets (`_Group.lookup`), and sums the blocks: the same kernel on the same
input, so the pooled embeddings are bit-identical. It also returns the logical rows, which is
what the seen-row counts need (no second hash).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from embedding.methods.unified import UnifiedEmbedding
from embedding.serving.tables import QuantEmbeddingBags


@dataclass(frozen=True)
class Pooled:
    embeddings: torch.Tensor
    """float32 [batch, sum of feature widths], features in schema order."""
    rows: np.ndarray
    """Logical rows of every lookup, key-major in `lookup_keys` order (int64)."""
    counts: np.ndarray
    """Values of each lookup key in `rows` (its bag lengths summed)."""


class UnifiedLookup:
    def __init__(self, method: UnifiedEmbedding, tables: QuantEmbeddingBags) -> None:
        if len(tables.groups) != 1 or tables.groups[0].features != method._block_keys:
            raise ValueError("UnifiedLookup needs the method's tables in one TBE, one feature per block in block order")
        self.method = method
        self.group = tables.groups[0]
        self.n_keys = len(method._keys)
        self.n_blocks = method.num_blocks
        widths = [method.schema.width(spec.name) for spec in method.schema.sparse]
        bounds = np.cumsum([0, *widths]).tolist()
        self.means = [
            (bounds[i], bounds[i + 1], method._first_lookup[i])
            for i, spec in enumerate(method.schema.sparse)
            if spec.pooling == "mean"
        ]

    def __call__(self, features: KeyedJaggedTensor) -> Pooled:
        batch = features.stride()
        rows, lengths = self.method.rows_numpy(features)
        values, routed = self.method.route_rows(rows, lengths, batch)
        offsets = np.zeros(routed.size + 1, dtype=np.int64)
        np.cumsum(routed, out=offsets[1:])
        pooled = self.group.lookup(torch.from_numpy(values), torch.from_numpy(offsets))
        dim = self.method.dim
        if self.n_blocks > 1:  # [batch * keys, blocks * d], bags example-major: add the blocks' partial sums
            pooled = pooled.view(batch * self.n_keys, self.n_blocks, dim).sum(dim=1)
        pooled = pooled.view(batch, self.n_keys * dim)
        if self.means:
            per_key = torch.from_numpy(lengths).view(self.n_keys, batch)
            for start, end, key in self.means:
                pooled[:, start:end] = pooled[:, start:end] / per_key[key].clamp(min=1).to(torch.float32).unsqueeze(1)
        counts = lengths.reshape(self.n_keys, batch).sum(axis=1)
        return Pooled(pooled, rows, counts)
