"""Hash embeddings (Svenstrup et al.): the M2 x k importance table is stored packed in 4-wide rows,
so it holds M2 * k weights (plus less than one stored row of padding), and each value reads its own
k weights."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from embedding.methods import HashEmbedding
from embedding.schema import FeatureSchema, SparseFeature

SCHEMA = FeatureSchema(name="he", embedding_dim=4, sparse=(SparseFeature(name="a"),))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_importance_table_holds_k_weights_per_row_and_reads_its_own(k: int) -> None:
    module = HashEmbedding(SCHEMA, num_rows=50, importance_rows=37, num_hashes=k, multiplexed=True)
    stored = module.importance.embedding_bags["multihash_importance"].weight
    assert stored.shape[1] % 4 == 0, "fbgemm's TBE needs widths divisible by 4"
    assert 0 <= stored.numel() - 37 * k < stored.shape[1], "padding: less than one stored row"
    with torch.no_grad():
        stored.copy_(torch.arange(stored.numel(), dtype=stored.dtype).view_as(stored))
    rows = torch.arange(37)
    (weights,) = module.importance_weights(["a@0:imp"], [rows])
    assert weights.tolist() == [[float(r * k + j) for j in range(k)] for r in range(37)]


def test_embedding_is_the_importance_weighted_sum_of_the_hashed_rows() -> None:
    torch.manual_seed(0)
    module = HashEmbedding(SCHEMA, num_rows=50, importance_rows=11, num_hashes=3, multiplexed=True)
    values = torch.tensor([5, -7, 2**62])
    kjt = KeyedJaggedTensor(keys=["a"], values=values, lengths=torch.ones(3, dtype=torch.int64))
    out = module(kjt).values()
    h0, hs = module.hashes_for("a", 0)
    table = module.ebc.embedding_bags["multihash"].weight
    (p,) = module.importance_weights(["a@0:imp"], [h0(values)])
    expected = sum(p[:, i : i + 1] * table[h(values)] for i, h in enumerate(hs))
    torch.testing.assert_close(out, expected)
