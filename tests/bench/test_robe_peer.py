"""The ROBE peer of bench/embedding_throughput computes what the table form computes (same work)."""

from __future__ import annotations

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from bench.peers.robe_gather import GatherRobe
from embedding.methods import RobeEmbedding
from embedding.schema import FeatureSchema, SparseFeature


def test_gather_peer_equals_the_table_form() -> None:
    schema = FeatureSchema(
        name="p", embedding_dim=8, sparse=(SparseFeature(name="a"), SparseFeature(name="b", multivalent=True))
    )
    kjt = KeyedJaggedTensor(keys=["a", "b"], values=torch.arange(6), lengths=torch.tensor([1, 0, 1, 1, 1, 2]))
    for block in (1, 8):
        method = RobeEmbedding(schema, size=101, block=block)
        torch.testing.assert_close(GatherRobe(method)(kjt), method(kjt).values().detach())
