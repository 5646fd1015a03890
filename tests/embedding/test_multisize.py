"""Multi-size unified embedding: the lookup allocation rule and the multi-size model built from it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from embedding.methods import UnifiedEmbedding
from embedding.multisize import MAX_LOOKUPS, allocate_lookups, lookups_for_width, multisize_schema, with_lookups
from embedding.schema import FeatureSchema, load_schema

cardinalities = st.dictionaries(
    st.from_regex(r"[a-z]{1,6}", fullmatch=True),
    st.floats(min_value=0, max_value=1e10, allow_nan=False),
    min_size=1,
    max_size=12,
)


@st.composite
def problems(draw: st.DrawFn) -> tuple[dict[str, float], int, int]:
    counts = draw(cardinalities)
    cap = draw(st.integers(1, 8))
    total = draw(st.integers(len(counts), cap * len(counts)))
    return counts, total, cap


@settings(max_examples=200, deadline=None)
@given(problems())
def test_allocation_spends_the_budget_within_bounds(problem: tuple[dict[str, float], int, int]) -> None:
    counts, total, cap = problem
    out = allocate_lookups(counts, total, max_lookups=cap)
    assert list(out) == list(counts)
    assert sum(out.values()) == total
    assert all(1 <= k <= cap for k in out.values())


@settings(max_examples=200, deadline=None)
@given(problems())
def test_more_values_never_fewer_lookups(problem: tuple[dict[str, float], int, int]) -> None:
    counts, total, cap = problem
    out = allocate_lookups(counts, total, max_lookups=cap)
    for a in counts:
        for b in counts:
            if max(counts[a], 1.0) > max(counts[b], 1.0):
                assert out[a] >= out[b], (counts, out)


@settings(max_examples=100, deadline=None)
@given(problems())
def test_close_to_the_fourth_root_shares(problem: tuple[dict[str, float], int, int]) -> None:
    """Unclamped features get their fourth-root share rounded: within one lookup of it."""
    counts, total, cap = problem
    out = allocate_lookups(counts, total, max_lookups=cap)
    weights = {n: max(c, 1.0) ** 0.25 for n, c in counts.items()}
    free = [n for n, k in out.items() if 1 < k < cap]
    if len(free) < 2:
        return
    budget = sum(out[n] for n in free)
    norm = sum(weights[n] for n in free)
    for n in free:
        assert abs(out[n] - budget * weights[n] / norm) < 2.0  # clamping of others moves the split a little


def test_fourth_root_example() -> None:
    # 16x the values -> 2x the width: 10,000 and 625 share 6 lookups 4:2, the 1-value feature keeps 1
    assert allocate_lookups({"a": 10_000, "b": 625, "c": 1}, total_lookups=7) == {"a": 4, "b": 2, "c": 1}
    assert allocate_lookups({"a": 1e9, "b": 10}, total_lookups=7) == {"a": MAX_LOOKUPS, "b": 1}


def test_infeasible_budgets_say_what_is_possible() -> None:
    with pytest.raises(ValueError, match="2 <= total_lookups <= 12"):
        allocate_lookups({"a": 1, "b": 2}, total_lookups=13)
    with pytest.raises(ValueError, match="2 <= total_lookups <= 12"):
        allocate_lookups({"a": 1, "b": 2}, total_lookups=1)
    with pytest.raises(ValueError, match="multiple of the embedding_dim 8"):
        lookups_for_width(100, 8)
    with pytest.raises(ValueError, match="lacks"):
        with_lookups(load_schema("movielens"), {"nope": 2})


def test_multisize_schema_keeps_the_total_width() -> None:
    schema = load_schema("movielens")
    multi = multisize_schema(schema, total_width=schema.total_width, embedding_dim=schema.embedding_dim // 2)
    assert multi.total_width == schema.total_width
    assert multi.embedding_dim == schema.embedding_dim // 2
    lookups = {s.name: s.lookups for s in multi.sparse}
    assert lookups["movie"] >= lookups["user"] >= lookups["occupation"] >= lookups["gender"] == 1
    assert multi.source == schema.source  # the dataset mapping travels with it


def test_shipped_multisize_schema_is_multi_size() -> None:
    schema = load_schema("movielens_multisize")
    assert len({s.lookups for s in schema.sparse}) > 1
    base = load_schema("movielens")
    assert schema.total_width == base.total_width


def test_unified_multisize_widths_and_lookups() -> None:
    """Each feature's output is its k lookups' rows concatenated, in lookup order."""
    schema = with_lookups(
        FeatureSchema(
            name="m", embedding_dim=4, sparse=({"name": "a", "dtype": "int"}, {"name": "b", "dtype": "int"})
        ),
        {"a": 3, "b": 1},
    )
    method = UnifiedEmbedding(schema, num_rows=50, num_blocks=3)
    kjt = KeyedJaggedTensor(keys=["a", "b"], values=torch.tensor([7, 9, 7]), lengths=torch.tensor([1, 1, 1, 0]))
    out = method(kjt).to_dict()
    assert out["a"].shape == (2, 12) and out["b"].shape == (2, 4)
    table = torch.cat([method.ebc.embedding_bags[method.table_name(b)].weight for b in range(3)])
    for j in range(3):
        row = int(method.hash_for("a", j)(torch.tensor([7]))[0])
        assert torch.allclose(out["a"][0, 4 * j : 4 * (j + 1)], table[row])
    assert torch.equal(out["b"][1], torch.zeros(4))
