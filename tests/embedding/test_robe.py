"""ROBE-Z against a slow Python-int reference: chunk starts, wrap-around at the end of the array,
signs; ROBE-1 (HashedNet) and ROBE-D as special cases; signed gradient accumulation."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from embedding.hashing import MERSENNE_61
from embedding.methods import RobeEmbedding, robe_reference
from embedding.schema import FeatureSchema, SparseFeature

SCHEMA = FeatureSchema(
    name="robe", embedding_dim=5, sparse=(SparseFeature(name="a"), SparseFeature(name="b", lookups=2))
)


def _check(module: RobeEmbedding, feature: str, xs: list[int]) -> None:
    idx, sign = module.indices(feature, torch.tensor(xs, dtype=torch.int64))
    coef_h, coef_g = module.coefficients(feature)
    width = SCHEMA.width(feature)
    for row, x in enumerate(xs):
        ref_idx, ref_sign = robe_reference(
            x, module.table_id(feature), width, module.block, module.sizes[feature], coef_h, coef_g
        )
        assert idx[row].tolist() == [i + module._offsets[feature] for i in ref_idx]
        if coef_g is not None:
            assert sign is not None and sign[row].tolist() == ref_sign


@settings(max_examples=30, deadline=None)
@given(
    xs=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=8),
    block=st.integers(1, 12),
    size=st.integers(1, 40),
    multiplexed=st.booleans(),
)
def test_indices_match_the_slow_reference(xs: list[int], block: int, size: int, multiplexed: bool) -> None:
    kw = {"size": size} if multiplexed else {"sizes": {"a": size, "b": size + 3}}
    module = RobeEmbedding(SCHEMA, block=block, multiplexed=multiplexed, **kw)
    _check(module, "a", xs)
    _check(module, "b", xs)


def test_chunks_wrap_around_the_end_of_the_array() -> None:
    module = RobeEmbedding(SCHEMA, size=7, block=5)
    xs = torch.arange(200, dtype=torch.int64)
    idx, _ = module.indices("b", xs)
    starts = idx[:, 0]
    wrapped = starts > 2  # a 5-chunk starting after position 2 of a 7-array runs past the end
    assert wrapped.any()
    assert torch.equal(idx[:, :5], (starts.unsqueeze(1) + torch.arange(5)) % 7)
    assert (idx[wrapped, 4] < idx[wrapped, 0]).all()
    _check(module, "b", xs.tolist())


def test_robe_1_hashes_every_element_and_robe_d_takes_one_contiguous_block() -> None:
    robe_1 = RobeEmbedding(SCHEMA, size=10_007, block=1, signed=False)
    idx, _ = robe_1.indices("b", torch.tensor([42]))
    (a, b, c, d), _ = robe_1.coefficients("b")
    e = robe_1.table_id("b")
    assert idx[0].tolist() == [((a * e + b * 42 + c * i + d) % MERSENNE_61) % 10_007 for i in range(10)]
    robe_d = RobeEmbedding(SCHEMA, size=10_007, block=10, signed=False)
    idx, _ = robe_d.indices("b", torch.tensor([42]))
    (a, b, c, d), _ = robe_d.coefficients("b")
    start = ((a * e + b * 42 + d) % MERSENNE_61) % 10_007
    assert idx[0].tolist() == [(start + i) % 10_007 for i in range(10)]
    wider = RobeEmbedding(SCHEMA, size=10_007, block=64, signed=False)  # Z >= width is ROBE-D too
    assert torch.equal(wider.indices("b", torch.tensor([42]))[0], idx)


def test_sign_hash_is_applied_and_gradients_are_summed_with_signs() -> None:
    kjt = KeyedJaggedTensor(keys=["a", "b"], values=torch.tensor([11, 12, 13]), lengths=torch.tensor([1, 0, 1, 1]))
    signed = RobeEmbedding(SCHEMA, size=13, block=2, signed=True)
    plain = RobeEmbedding(SCHEMA, size=13, block=2, signed=False)
    with torch.no_grad():
        plain.weight.copy_(signed.weight)
    _, sign = signed.indices("a", torch.tensor([11]))
    assert sign is not None and set(sign.unique().tolist()) <= {-1.0, 1.0}
    out_s, out_p = signed(kjt).to_dict()["a"], plain(kjt).to_dict()["a"]
    torch.testing.assert_close(out_s[0], out_p[0] * sign[0])
    signed(kjt).values().sum().backward()
    expected = torch.zeros(13)
    for feature, xs in (("a", [11]), ("b", [12, 13])):
        idx, sgn = signed.indices(feature, torch.tensor(xs))
        expected.index_add_(0, idx.reshape(-1), sgn.reshape(-1))
    torch.testing.assert_close(signed.weight.grad, expected)
