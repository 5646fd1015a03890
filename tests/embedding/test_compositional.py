"""Complementary partitions: every category below |S| = prod(m_i) gets its own tuple of component
rows and therefore its own embedding (QR, generalised QR, CRT), for every combining operation; a
known vocabulary is enumerated (Shi et al., Def. 1 / Thm 1), so it is collision-free up to
prod(m_i) values, while an open vocabulary is hashed first and collides like a hashing trick."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embedding.hashing import fingerprint
from embedding.methods import CompositionalEmbedding, partition_indices
from embedding.methods.compositional import apply_path, check_moduli, coprime_moduli
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


def _fingerprints(n: int, offset: int = 0) -> torch.Tensor:
    return torch.from_numpy(fingerprint(np.arange(offset, offset + n), "int"))


def _distinct_rows(t: torch.Tensor) -> int:
    return len({tuple(row) for row in t.tolist()})


@settings(max_examples=40, deadline=None)
@given(data=st.data(), operation=st.sampled_from(["concat", "add", "mult", "path"]), crt=st.booleans())
def test_a_known_vocabulary_is_collision_free_up_to_the_product_of_the_moduli(
    data: st.DataObject, operation: str, crt: bool
) -> None:
    moduli = data.draw(moduli_crt if crt else moduli_qr)
    if operation == "path":
        moduli = (moduli + [1, 1])[:2]
    size = math.prod(moduli)
    n = data.draw(st.integers(1, size), label="vocabulary size")
    values = data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n, unique=True))
    vocab = torch.tensor(values, dtype=torch.int64)
    torch.manual_seed(0)
    module = CompositionalEmbedding.from_vocabulary(
        SCHEMA, {"a": vocab}, moduli=moduli, partition="crt" if crt else "qr", operation=operation
    )
    cats = module.categories("a", 0, vocab)
    assert cats.unique().numel() == n and int(cats.min()) >= 0 and int(cats.max()) < size
    parts = torch.stack(partition_indices(cats, moduli, module.partition), dim=1)
    assert _distinct_rows(parts) == n, "distinct known values need distinct component tuples"
    vectors = module.embed_categories([cats])[0].detach()
    assert _distinct_rows(vectors) == n, "every known value needs its own embedding"


@settings(max_examples=25, deadline=None)
@given(moduli=moduli_qr, extra=st.integers(1, 200))
def test_a_vocabulary_larger_than_the_moduli_spreads_evenly(moduli: list[int], extra: int) -> None:
    size = math.prod(moduli)
    n = size + extra
    module = CompositionalEmbedding.from_vocabulary(SCHEMA, {"a": _fingerprints(n)}, moduli=moduli)
    counts = torch.bincount(module.categories("a", 0, module.vocabulary("a")), minlength=size)
    assert counts.numel() == size and int(counts.max()) == math.ceil(n / size) and int(counts.min()) == n // size


def test_the_papers_example_is_exact_with_a_vocabulary_and_a_hashing_trick_without() -> None:
    """943 users, moduli [31, 31] (961 >= 943): enumeration gives 943 embeddings; hashing first gives
    about as many distinct categories as 943 draws from 961 bins, S * (1 - (1 - 1/S)^n) ~ 601."""
    users = _fingerprints(943)
    known = CompositionalEmbedding.from_vocabulary(SCHEMA, {"a": users}, moduli=[31, 31])
    assert _distinct_rows(known.embed_categories([known.categories("a", 0, users)])[0].detach()) == 943
    open_vocab = CompositionalEmbedding(SCHEMA, moduli=[31, 31])
    distinct = open_vocab.categories("a", 0, users).unique().numel()
    expected = 961 * (1 - (1 - 1 / 961) ** 943)
    assert abs(distinct - expected) < 0.05 * expected, (distinct, expected)


def test_values_outside_the_vocabulary_take_the_categories_it_leaves_free() -> None:
    module = CompositionalEmbedding.from_vocabulary(SCHEMA, {"a": _fingerprints(40)}, moduli=[7, 9])
    unseen = module.categories("a", 0, _fingerprints(2000, offset=10_000))
    assert int(unseen.min()) >= 40 and int(unseen.max()) < 63
    assert unseen.unique().numel() == 63 - 40, "the free categories are all used"
    full = CompositionalEmbedding.from_vocabulary(SCHEMA, {"a": _fingerprints(63)}, moduli=[7, 9])
    unseen = full.categories("a", 0, _fingerprints(2000, offset=10_000))
    assert int(unseen.min()) >= 0 and int(unseen.max()) < 63


def test_the_vocabulary_is_part_of_the_state_dict() -> None:
    users = _fingerprints(50)
    module = CompositionalEmbedding.from_vocabulary(SCHEMA, {"a": users}, moduli=[8, 8])
    clone = CompositionalEmbedding(SCHEMA, **module.config())
    clone.load_state_dict(module.state_dict())
    assert torch.equal(clone.categories("a", 0, users), module.categories("a", 0, users))
    with pytest.raises(ValueError, match="configured for 50"):
        clone.set_vocabulary({"a": users[:10]})


@pytest.mark.parametrize("hidden", [0, 6])
def test_path_functions_are_affine_maps_with_bias_or_mlps(hidden: int) -> None:
    torch.manual_seed(0)
    module = CompositionalEmbedding(SCHEMA, moduli=[5, 3], operation="path", path_hidden=hidden)
    cats = torch.arange(15)
    out = module.embed_categories([cats])[0]
    first = module.ebc.embedding_bags["compositional_a_0"].weight
    params = module.ebc.embedding_bags["compositional_a_1"].weight
    w = SCHEMA.embedding_dim
    for c in cats.tolist():
        z, p = first[c % 5], params[c // 5]
        if hidden == 0:
            expected = z @ p[: w * w].view(w, w) + p[w * w :]
        else:
            a1, b1 = p[: w * hidden].view(w, hidden), p[w * hidden : w * hidden + hidden]
            a2, b2 = p[w * hidden + hidden : -w].view(hidden, w), p[-w:]
            expected = torch.relu(z @ a1 + b1) @ a2 + b2
        torch.testing.assert_close(out[c], expected)
    out.sum().backward()
    assert params.grad is not None and params.grad[:, -w:].abs().sum() > 0, "the bias is trained"
    if hidden:  # not linear: f(-z) != -f(z) (zero biases keep it positively homogeneous)
        z, p = torch.randn(20, w), params[:1].detach().expand(20, -1)
        assert not torch.allclose(apply_path(-z, p, hidden), -apply_path(z, p, hidden))


def test_a_single_modulus_is_a_full_table() -> None:
    module = CompositionalEmbedding.from_vocabulary(SCHEMA, {"a": _fingerprints(30)}, moduli=[30], operation="mult")
    table = module.ebc.embedding_bags["compositional_a_0"].weight
    assert table.shape == (30, SCHEMA.embedding_dim)
    cats = module.categories("a", 0, module.vocabulary("a"))
    torch.testing.assert_close(module.embed_categories([cats])[0], table[cats])
