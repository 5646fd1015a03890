"""ROBE-Z against a slow Python-int reference: chunk starts, wrap-around at the end of the array,
signs; ROBE-1 (HashedNet), ROBE-D and Z > width (clubbed embeddings); chunk and sign hashes
independent across chunks (what HashedNet and the ROBE analysis assume); signed gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from embedding.hashing import MERSENNE_61
from embedding.methods import RobeEmbedding, robe_reference
from embedding.methods.robe import hash_columns
from embedding.schema import FeatureSchema, SparseFeature

SCHEMA = FeatureSchema(
    name="robe", embedding_dim=5, sparse=(SparseFeature(name="a"), SparseFeature(name="b", lookups=2))
)
WIDE = FeatureSchema(name="wide", embedding_dim=16, sparse=(SparseFeature(name="a"),))


def _check(module: RobeEmbedding, feature: str, xs: list[int]) -> None:
    idx, sign = module.indices(feature, torch.tensor(xs, dtype=torch.int64))
    chunk, signs, club = module.hashes(feature)
    width = module.schema.width(feature)
    for row, x in enumerate(xs):
        ref_idx, ref_sign = robe_reference(x, width, module.block, module.sizes[feature], chunk, signs, club)
        assert idx[row].tolist() == [i + module._offsets[feature] for i in ref_idx]
        if signs is not None:
            assert sign is not None and sign[row].tolist() == ref_sign


@settings(max_examples=30, deadline=None)
@given(
    xs=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=8),
    block=st.sampled_from([1, 2, 3, 4, 5, 10, 20, 30]),
    size=st.integers(1, 40),
    multiplexed=st.booleans(),
)
def test_indices_match_the_slow_reference(xs: list[int], block: int, size: int, multiplexed: bool) -> None:
    kw = {"size": size} if multiplexed else {"sizes": {"a": size, "b": size + 3}}
    module = RobeEmbedding(SCHEMA, block=block, multiplexed=multiplexed, **kw)
    _check(module, "a", xs)
    _check(module, "b", xs)


def test_hash_columns_is_one_universal_hash_per_column() -> None:
    module = RobeEmbedding(WIDE, size=997, block=1)
    chunk, signs, _ = module.hashes("a")
    xs = torch.randint(-(2**63), 2**63 - 1, (500,))
    assert torch.equal(hash_columns(xs, chunk), torch.stack([h(xs) for h in chunk], dim=1))
    assert signs is not None and torch.equal(hash_columns(xs, signs), torch.stack([g(xs) for g in signs], dim=1))


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
    chunk, _, _ = robe_1.hashes("b")
    assert len(chunk) == 10 and idx[0].tolist() == [h.reference(42) for h in chunk]
    robe_d = RobeEmbedding(SCHEMA, size=10_007, block=10, signed=False)
    idx, _ = robe_d.indices("b", torch.tensor([42]))
    (h0,), _, _ = robe_d.hashes("b")
    assert idx[0].tolist() == [(h0.reference(42) + i) % 10_007 for i in range(10)]


def test_a_block_wider_than_the_embedding_clubs_embeddings() -> None:
    """Z = 4D: values sharing a group share one block of Z elements, each in its own D-slot."""
    module = RobeEmbedding(WIDE, size=100_003, block=64, signed=False)
    _, _, club = module.hashes("a")
    assert club is not None
    xs = torch.randint(-(2**63), 2**63 - 1, (4000,))
    idx, _ = module.indices("a", xs)
    assert torch.equal(idx, (idx[:, :1] + torch.arange(16)) % 100_003), "each embedding is contiguous"
    u = club(xs)
    block_start = (idx[:, 0] - (u % 4) * 16) % 100_003
    assert torch.equal(block_start, module.hashes("a")[0][0](u // 4)), "the group's hash places the block"
    # four values of one group (the club hash inverted): disjoint slots of one block of 64
    inverse = pow(club.a, -1, MERSENNE_61)
    members = torch.tensor([inverse * (v - club.b) % MERSENNE_61 for v in range(4000, 4004)])
    assert club(members).tolist() == list(range(4000, 4004))
    idx, _ = module.indices("a", members)
    start = module.hashes("a")[0][0].reference(1000)
    assert set(idx.reshape(-1).tolist()) == {(start + i) % 100_003 for i in range(64)}
    with pytest.raises(ValueError, match="not a multiple"):
        RobeEmbedding(WIDE, size=1000, block=24)


def _colliding_pairs(idx: torch.Tensor, column: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (a, b) of rows whose `column` position is equal (adjacent after sorting)."""
    order = torch.argsort(idx[:, column], stable=True)
    col = idx[order, column]
    same = (col[1:] == col[:-1]).nonzero().squeeze(1)
    return order[same], order[same + 1]


@pytest.mark.parametrize("block", [1, 4])
def test_colliding_values_share_other_chunks_only_by_chance(block: int) -> None:
    """Issue-level property: with independent chunk hashes, two values that collide in chunk 0
    share another chunk with probability 1/|M|, so over 16 elements they share about
    Z + (16 - Z) / |M| positions (the affine chunk hash shared about 11 of 16 at Z = 1), and
    their signs agree on half of the elements."""
    size = 1000
    module = RobeEmbedding(WIDE, size=size, block=block)
    xs = torch.randint(-(2**63), 2**63 - 1, (20_000,), generator=torch.Generator().manual_seed(3))
    idx, sign = module.indices("a", xs)
    a, b = _colliding_pairs(idx, 0)
    assert a.numel() > 1000
    shared = (idx[a] == idx[b]).float().sum(1).mean().item()
    independent = block + (16 - block) / size
    assert abs(shared - independent) < 0.05, (shared, independent)
    assert sign is not None
    agree = (sign[a] == sign[b]).float().mean().item()
    assert abs(agree - 0.5) < 0.03, agree


def test_configs_record_the_hash_version_and_other_versions_are_refused() -> None:
    module = RobeEmbedding(SCHEMA, size=50, block=2)
    assert module.config()["hash_version"] == 2
    with pytest.raises(ValueError, match="hash_version 1"):
        RobeEmbedding(SCHEMA, size=50, block=2, hash_version=1)


def test_sign_hash_is_applied_and_gradients_are_summed_with_signs() -> None:
    kjt = KeyedJaggedTensor(keys=["a", "b"], values=torch.tensor([11, 12, 13]), lengths=torch.tensor([1, 0, 1, 1]))
    signed = RobeEmbedding(SCHEMA, size=13, block=2, signed=True)
    plain = RobeEmbedding(SCHEMA, size=13, block=2, signed=False)
    with torch.no_grad():
        plain.array.copy_(signed.array)
    _, sign = signed.indices("a", torch.tensor([11]))
    assert sign is not None and set(sign.unique().tolist()) <= {-1.0, 1.0}
    out_s, out_p = signed(kjt).to_dict()["a"], plain(kjt).to_dict()["a"]
    torch.testing.assert_close(out_s[0], out_p[0] * sign[0])
    signed(kjt).values().sum().backward()
    expected = torch.zeros(13)
    for feature, xs in (("a", [11]), ("b", [12, 13])):
        idx, sgn = signed.indices(feature, torch.tensor(xs))
        expected.index_add_(0, idx.reshape(-1), sgn.reshape(-1))
    grad = signed.ebc.embedding_bags["robe"].weight.grad
    assert grad is not None
    torch.testing.assert_close(grad.reshape(-1)[:13], expected)
    assert not grad.reshape(-1)[13:].any(), "the last row's tail is never read"


@settings(max_examples=25, deadline=None)
@given(
    block=st.sampled_from([1, 2, 5, 10, 20]),
    size=st.integers(1, 60),
    multiplexed=st.booleans(),
    signed=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_table_lookup_equals_the_gather_of_the_paper(
    block: int, size: int, multiplexed: bool, signed: bool, seed: int
) -> None:
    """The table form (rows of 4; a single-valued feature's element picked from its row, a multivalent
    one's pooled per column and sign) is sum_x g(x) * M[h(x)]."""
    schema = FeatureSchema(
        name="robe-mv", embedding_dim=5, sparse=(SparseFeature(name="a"), SparseFeature(name="b", lookups=2,
                                                                                          multivalent=True))
    )  # fmt: skip
    kw = {"size": size} if multiplexed else {"sizes": {"a": size, "b": size + 3}}
    module = RobeEmbedding(schema, block=block, multiplexed=multiplexed, signed=signed, seed=seed, **kw)
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.cat([torch.randint(0, 2, (4,), generator=gen), torch.randint(0, 4, (4,), generator=gen)])
    values = torch.randint(-(2**63), 2**63 - 1, (int(lengths.sum()),), generator=gen)
    kjt = KeyedJaggedTensor(keys=["a", "b"], values=values, lengths=lengths)
    out = module(kjt).to_dict()
    array = module.array.detach()
    start = 0
    for name, lens in (("a", lengths[:4]), ("b", lengths[4:])):
        n = int(lens.sum())
        idx, sign = module.indices(name, values[start : start + n])
        vectors = array[idx] * (sign if sign is not None else 1.0)
        want = torch.zeros(4, idx.shape[1]).index_add(0, torch.repeat_interleave(torch.arange(4), lens), vectors)
        torch.testing.assert_close(out[name].detach(), want)
        start += n


def test_a_single_valued_feature_with_several_values_is_an_error() -> None:
    module = RobeEmbedding(SCHEMA, size=50, block=2)
    kjt = KeyedJaggedTensor(keys=["a", "b"], values=torch.tensor([1, 2, 3]), lengths=torch.tensor([2, 0, 1, 0]))
    with pytest.raises(ValueError, match="'a' is not multivalent but a bag holds 2 values"):
        module(kjt)
