"""Unified embedding: per-feature seeds, seed groups, multi-size width, and row blocks that change
storage but never the function."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from embedding.methods import UnifiedEmbedding
from embedding.methods.unified import block_sizes
from embedding.schema import FeatureSchema, SparseFeature


def _two_features(group_a: str | None, group_b: str | None, lookups: int = 1) -> FeatureSchema:
    return FeatureSchema(
        name="pair",
        embedding_dim=4,
        sparse=(
            SparseFeature(name="a", seed_group=group_a, lookups=lookups),
            SparseFeature(name="b", seed_group=group_b, lookups=lookups),
        ),
    )


def _same_tokens(n: int = 200) -> KeyedJaggedTensor:
    tokens = torch.arange(n, dtype=torch.int64) * 7919 - 3
    return KeyedJaggedTensor(
        keys=["a", "b"], values=torch.cat([tokens, tokens]), lengths=torch.ones(2 * n, dtype=torch.int64)
    )


def test_same_token_lands_in_different_rows_per_feature() -> None:
    module = UnifiedEmbedding(_two_features(None, None), num_rows=100_003)
    rows, _ = module.rows(_same_tokens())
    a, b = rows.view(2, -1)
    assert (a != b).float().mean() > 0.99


def test_shared_seed_group_shares_rows_and_embeddings() -> None:
    module = UnifiedEmbedding(_two_features("g", "g"), num_rows=1009)
    rows, _ = module.rows(_same_tokens())
    a, b = rows.view(2, -1)
    assert torch.equal(a, b)
    out = module(_same_tokens()).to_dict()
    torch.testing.assert_close(out["a"], out["b"])


def test_k_lookups_give_width_k_times_d_with_distinct_rows() -> None:
    module = UnifiedEmbedding(_two_features(None, None, lookups=3), num_rows=100_003)
    out = module(_same_tokens(50))
    assert out.length_per_key() == [12, 12]
    rows, _ = module.rows(_same_tokens(50))
    per_lookup = rows.view(6, -1)  # (feature, lookup) major
    assert (per_lookup[0] != per_lookup[1]).float().mean() > 0.95


def test_any_number_of_blocks_gives_the_same_output_and_gradients(
    schema: FeatureSchema, kjt: KeyedJaggedTensor
) -> None:
    torch.manual_seed(0)
    one = UnifiedEmbedding(schema, num_rows=101, num_blocks=1)
    logical = one.ebc.embedding_bags[one.table_name(0)].weight.detach()
    for blocks in (2, 3, 7, 26, 101):  # 101 rows in 26 blocks: 4 each would leave the last ones empty
        many = UnifiedEmbedding(schema, num_rows=101, num_blocks=blocks)
        with torch.no_grad():
            for b in range(blocks):
                w = many.ebc.embedding_bags[many.table_name(b)].weight
                w.copy_(logical[many.starts[b] : many.starts[b] + w.shape[0]])
        out_many, out_one = many(kjt).values(), one(kjt).values()
        torch.testing.assert_close(out_many, out_one, rtol=1e-6, atol=1e-7)
        grad = torch.randn_like(out_one)
        out_many.backward(grad)
        one.zero_grad()
        out_one.backward(grad)
        grads = torch.cat([many.ebc.embedding_bags[many.table_name(b)].weight.grad for b in range(blocks)])
        torch.testing.assert_close(grads, one.ebc.embedding_bags[one.table_name(0)].weight.grad)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_block_holds_rows_and_locate_finds_them(data: st.DataObject) -> None:
    num_rows = data.draw(st.integers(1, 200))
    num_blocks = data.draw(st.integers(1, num_rows))
    sizes = block_sizes(num_rows, num_blocks)
    assert len(sizes) == num_blocks and sum(sizes) == num_rows and min(sizes) >= 1
    per = math.ceil(num_rows / num_blocks)
    if per * (num_blocks - 1) < num_rows:  # the layout trained models use is kept where it exists
        assert sizes[:-1] == [per] * (num_blocks - 1)
    else:
        assert max(sizes) - min(sizes) == 1
    schema = FeatureSchema(name="one", embedding_dim=4, sparse=(SparseFeature(name="a"),))
    module = UnifiedEmbedding(schema, num_rows=num_rows, num_blocks=num_blocks)
    rows = torch.arange(num_rows)
    block, local = module.locate(rows)
    starts = torch.tensor(module.starts)
    assert torch.equal(starts[block] + local, rows) and (local >= 0).all()
    assert (local < torch.tensor(sizes)[block]).all()


def test_nine_rows_in_four_blocks_work_and_match_one_block(schema: FeatureSchema, kjt: KeyedJaggedTensor) -> None:
    torch.manual_seed(0)
    one = UnifiedEmbedding(schema, num_rows=9, num_blocks=1)
    four = UnifiedEmbedding(schema, num_rows=9, num_blocks=4)
    assert four.sizes == [3, 2, 2, 2]
    with torch.no_grad():
        logical = one.ebc.embedding_bags[one.table_name(0)].weight
        for b, start in enumerate(four.starts):
            w = four.ebc.embedding_bags[four.table_name(b)].weight
            w.copy_(logical[start : start + w.shape[0]])
    torch.testing.assert_close(four(kjt).values(), one(kjt).values())
    with pytest.raises(ValueError, match="use locate"):
        _ = four.block_rows


def _reference_rows(module: UnifiedEmbedding, kjt: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows by the Python-int reference of each (feature, lookup) hash, key-major."""
    values, lengths = [], []
    for (name, _), h in zip(module._keys, module.hashes, strict=True):
        bag = kjt[name]
        values += [h.reference(int(x)) for x in bag.values()]
        lengths.append(bag.lengths())
    return torch.tensor(values, dtype=torch.int64), torch.cat(lengths)


def test_rows_hash_every_lookup_in_one_call_like_the_reference(schema: FeatureSchema, kjt: KeyedJaggedTensor) -> None:
    module = UnifiedEmbedding(schema, num_rows=1009, num_blocks=3)
    want_rows, want_lengths = _reference_rows(module, kjt)
    rows, lengths = module.rows(kjt)
    assert torch.equal(rows, want_rows) and torch.equal(lengths, want_lengths)
    # keys in another order (and the torch path's per-key loop) give the same rows
    permuted = kjt.permute([4, 2, 0, 3, 1])
    rows2, lengths2 = module.rows(permuted)
    assert torch.equal(rows2, want_rows) and torch.equal(lengths2, want_lengths)


def test_prepared_batch_is_the_routed_input_and_gives_the_same_output(
    schema: FeatureSchema, kjt: KeyedJaggedTensor
) -> None:
    for rows, blocks in ((101, 1), (101, 2), (101, 3), (101, 7), (9, 4)):  # 9 in 4: uneven blocks
        module = UnifiedEmbedding(schema, num_rows=rows, num_blocks=blocks)
        prepared = module.prepare(kjt)
        reference = module._route_torch(*_reference_rows(module, kjt), kjt.stride())
        assert prepared.kjt.keys() == reference.keys()
        assert torch.equal(prepared.kjt.values(), reference.values())
        assert torch.equal(prepared.kjt.lengths(), reference.lengths())
        assert module.is_routed(prepared.kjt) and not module.is_routed(kjt)
        # a routed batch skips hashing and routing; mean pooling (tags) divides by the original lengths
        torch.testing.assert_close(module(prepared.kjt).values(), module(kjt).values(), rtol=0, atol=0)
