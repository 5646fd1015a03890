"""Shared inputs for the embedding-method tests: a small schema with a multi-size feature, a
multivalent mean-pooled feature and a seed group, and a batch with multivalent and empty bags."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from embedding.schema import FeatureSchema, SparseFeature


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def schema() -> FeatureSchema:
    return FeatureSchema(
        name="methods-test",
        embedding_dim=4,
        sparse=(
            SparseFeature(name="user", dtype="int", vocab_size=500),
            SparseFeature(name="item", dtype="int", lookups=2, vocab_size=300),
            SparseFeature(name="tags", multivalent=True, pooling="mean", vocab_size=50),
            SparseFeature(name="city", seed_group="geo", vocab_size=20),
            SparseFeature(name="home_city", seed_group="geo", multivalent=True, vocab_size=20),
        ),
    )


@pytest.fixture
def kjt(schema: FeatureSchema) -> KeyedJaggedTensor:
    """Batch of 4: multivalent bags (tags: 3, 0, 2, 1 values; home_city 2, 0, 0, 1) and empty bags."""
    lengths = {
        "user": [1, 1, 1, 1],
        "item": [1, 0, 1, 1],
        "tags": [3, 0, 2, 1],
        "city": [1, 1, 0, 1],
        "home_city": [2, 0, 0, 1],
    }
    gen = torch.Generator().manual_seed(7)
    values, lens = [], []
    for name in schema.sparse_names:
        n = sum(lengths[name])
        values.append(torch.randint(-(2**62), 2**62, (n,), generator=gen))
        lens.extend(lengths[name])
    return KeyedJaggedTensor(keys=schema.sparse_names, values=torch.cat(values), lengths=torch.tensor(lens))
