"""Complementary partitions: every category below |S| = prod(m_i) gets its own tuple of component
rows and therefore its own embedding (QR, generalised QR, CRT), for every combining operation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embedding.methods import CompositionalEmbedding, partition_indices
from embedding.methods.compositional import check_moduli, coprime_moduli
from embedding.schema import FeatureSchema, SparseFeature

SCHEMA = FeatureSchema(name="qr", embedding_dim=4, sparse=(SparseFeature(name="a"),))


def _coprime(ms: list[int]) -> bool:
    return all(math.gcd(a, b) == 1 for i, a in enumerate(ms) for b in ms[i + 1 :])


moduli_qr = st.lists(st.integers(1, 9), min_size=1, max_size=3).filter(lambda ms: math.prod(ms) <= 300)
moduli_crt = st.lists(st.integers(1, 13), min_size=1, max_size=3).filter(
    lambda ms: _coprime(ms) and math.prod(ms) <= 300
)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), operation=st.sampled_from(["concat", "add", "mult", "path"]), crt=st.booleans())
def test_complementary_partitions_give_distinct_embeddings(data: st.DataObject, operation: str, crt: bool) -> None:
    moduli = data.draw(moduli_crt if crt else moduli_qr)
    if operation == "path":
        moduli = (moduli + [1, 1])[:2]
    if operation == "concat":
        moduli = moduli[: SCHEMA.embedding_dim]
    partition = "crt" if crt else "qr"
    size = math.prod(moduli)
    cats = torch.arange(size)
    parts = torch.stack(partition_indices(cats, moduli, partition), dim=1)
    assert len({tuple(row) for row in parts.tolist()}) == size, "component tuples must be unique"
    assert all((parts[:, i] < m).all() for i, m in enumerate(moduli))
    torch.manual_seed(0)
    module = CompositionalEmbedding(SCHEMA, moduli=moduli, partition=partition, operation=operation)  # type: ignore[arg-type]
    vectors = module.embed_categories([cats])[0].detach()
    assert len({tuple(v) for v in vectors.tolist()}) == size, "every category needs its own embedding"


def test_qr_is_quotient_and_remainder() -> None:
    r, q = partition_indices(torch.tensor([0, 6, 13, 34]), [7, 5], "qr")
    assert r.tolist() == [0, 6 % 7, 13 % 7, 34 % 7] and q.tolist() == [0, 0, 1, 4]


def test_crt_rejects_moduli_that_share_a_factor() -> None:
    with pytest.raises(ValueError, match="pairwise coprime"):
        check_moduli([4, 6], "crt", "mult")
    assert _coprime(coprime_moduli(10, 3))


def test_a_non_complementary_partition_collides() -> None:
    """The property is not vacuous: two CRT-style parts with a common factor repeat tuples."""
    parts = torch.stack(partition_indices(torch.arange(24), [4, 6], "crt"), dim=1)
    assert len({tuple(row) for row in parts.tolist()}) < 24


def test_frequent_values_keep_a_full_row() -> None:
    module = CompositionalEmbedding(SCHEMA, moduli=[3, 2], frequent={"a": 2})
    module.set_frequent({"a": [100, 200]})
    rows = module.frequent_rows("a", torch.tensor([100, 5, 200]))
    assert rows.tolist() == [0, -1, 1]
    vec = module.embed_categories([torch.tensor([1, 1, 1])], {"a": rows})[0]
    full = module.ebc.embedding_bags["compositional_a_full"].weight
    torch.testing.assert_close(vec[0], full[0])
    torch.testing.assert_close(vec[2], full[1])
    composed = module.embed_categories([torch.tensor([1])])[0]
    torch.testing.assert_close(vec[1], composed[0])
