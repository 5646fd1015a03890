"""MLET (multi-layer embedding training): train a table W (n x d) as the product of an inner
table W2 (n x k, k >= d) and a projection W1 (k x d), then collapse to the single n x d table for
export, so serving size and speed are those of the plain method.

`MLETEmbedding` wraps a table-based method (`unified`, `hashing_trick`, `collisionless`): the
inner method is built on the schema with embedding_dim = k, and since pooling is linear the
projection is applied after pooling, per lookup chunk (unified: one k x d map shared by all
features, as there is one table; per-feature methods: one map per feature's table).

Initialisation as in the paper (App., "Initialization strategy"): the inner table W2 is Xavier
(Glorot) uniform, bound sqrt(6 / (n + k)) with n the logical table's rows (all blocks of a unified
table together), and the projection W1 is Gaussian with std `init_std`, 0.5 by default, the
paper's value for every model but DLRM (0.25 there): too small and the MLET enhancement vanishes.

Training in the trainer: W2 is the wrapped method's TorchRec table(s), so it is trained sparsely
(fbgemm TBE, fused row-wise Adagrad on the rows a batch reads) and sharded like any table. W1 is
replicated and trained with the dense network (Adam, gradients all-reduced by DDP): every lookup
reads all of W1, so each step's gradient covers all of it and a sparse update would touch every
row anyway; it is k x d floats (4 KiB at k = 64, d = 16), nothing to shard.

`collapse()` returns the wrapped method's own class with the collapsed
weights (hashes, vocabularies and config unchanged), which reproduces this forward.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from embedding.methods.base import EmbeddingMethod, build_method, register
from embedding.methods.unified import UnifiedEmbedding
from embedding.schema import FeatureSchema

SUPPORTED = ("unified", "hashing_trick", "collisionless")


@torch.no_grad()
def xavier_base_(inner: EmbeddingMethod, inner_dim: int) -> None:
    """Xavier-uniform init of every table of `inner`, fan-in/out = (logical rows, inner_dim)."""
    ebc = inner.ebc  # type: ignore[union-attr]
    for cfg in ebc.embedding_bag_configs():
        rows = inner.num_rows if isinstance(inner, UnifiedEmbedding) else cfg.num_embeddings
        bound = math.sqrt(6.0 / (rows + inner_dim))
        ebc.embedding_bags[cfg.name].weight.uniform_(-bound, bound)


@register
class MLETEmbedding(EmbeddingMethod):
    method = "mlet"

    def __init__(
        self,
        schema: FeatureSchema,
        inner: str,
        inner_args: dict[str, Any],
        inner_dim: int,
        init_std: float = 0.5,
        device: str = "cpu",
    ) -> None:
        super().__init__(schema)
        if inner not in SUPPORTED:
            raise ValueError(f"MLET wraps one of {SUPPORTED}, got {inner!r}")
        d = schema.embedding_dim
        if inner_dim < d:
            raise ValueError(f"MLET inner dimension must be >= embedding_dim={d}, got {inner_dim}")
        self.inner_name, self.inner_dim, self.init_std = inner, inner_dim, init_std
        self.inner_schema = schema.model_copy(update={"embedding_dim": inner_dim})
        self.inner = build_method(inner, self.inner_schema, device=device, **inner_args)
        xavier_base_(self.inner, inner_dim)
        if inner == "unified":
            shapes = [(inner_dim, d)]
        else:
            shapes = [(self.inner_schema.width(s.name), schema.width(s.name)) for s in schema.sparse]
        self.projections = nn.ParameterList(
            [nn.Parameter(torch.empty(shape, device=torch.device(device)).normal_(0.0, init_std)) for shape in shapes]
        )

    def config(self) -> dict[str, Any]:
        return {
            "inner": self.inner_name,
            "inner_args": self.inner.config(),
            "inner_dim": self.inner_dim,
            "init_std": self.init_std,
        }

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        inner = self.inner(features).to_dict()
        per_feature = []
        for i, spec in enumerate(self.schema.sparse):
            x = inner[spec.name]
            if self.inner_name == "unified":  # each lookup chunk through the one shared map
                x = (x.view(-1, spec.lookups, self.inner_dim) @ self.projections[0]).reshape(x.shape[0], -1)
            else:
                x = x @ self.projections[i]
            per_feature.append(x)
        return self.output(per_feature)

    @torch.no_grad()
    def collapse(self) -> EmbeddingMethod:
        """The single-table method (the wrapped class) with W = W2 @ W1, for export."""
        plain = build_method(self.inner_name, self.schema, **self.inner.config())
        for name, buf in self.inner.named_buffers():
            plain.get_buffer(name).copy_(buf)
        inner_tables = self.inner.ebc.embedding_bags  # type: ignore[union-attr]
        for t, (table_name, bag) in enumerate(plain.ebc.embedding_bags.items()):  # type: ignore[union-attr]
            proj = self.projections[0 if self.inner_name == "unified" else t]
            bag.weight.copy_(inner_tables[table_name].weight @ proj)
        return plain
