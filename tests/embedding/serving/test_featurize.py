"""The serving featurizer builds exactly the general Featurizer's batch, whatever the events."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embedding import Event, FeatureBatch, Featurizer
from embedding.schema import DenseFeature, FeatureSchema, SparseFeature
from embedding.serving import ServingFeaturizer

SCHEMA = FeatureSchema(
    name="featurize-test",
    sparse=(
        SparseFeature(name="user", dtype="int"),
        SparseFeature(name="city", dtype="str"),
        SparseFeature(name="tags", dtype="str", multivalent=True),
    ),
    dense=(DenseFeature(name="price", transform="log1p"), DenseFeature(name="age", default=30.0)),
)


def assert_same(got: FeatureBatch, want: FeatureBatch) -> None:
    assert got.sparse.keys() == want.sparse.keys()
    assert torch.equal(got.sparse.values(), want.sparse.values())
    assert torch.equal(got.sparse.lengths(), want.sparse.lengths())
    assert got.sparse.length_per_key() == want.sparse.length_per_key()
    assert got.sparse.offset_per_key() == want.sparse.offset_per_key()
    assert got.sparse.stride() == want.sparse.stride()
    assert torch.equal(got.dense, want.dense)
    assert (got.labels is None) == (want.labels is None)
    if want.labels is not None:
        assert torch.equal(got.labels, want.labels)
    assert got.missing == want.missing and got.unknown == want.unknown


ints = st.one_of(st.integers(-5, 5), st.integers(-(2**63), 2**63 - 1), st.integers(2**63, 2**70))
values = st.one_of(ints, st.text(max_size=3), st.booleans(), st.lists(st.text(max_size=2), max_size=2))
plain_event = st.fixed_dictionaries(
    {"user": ints, "city": st.text(max_size=3), "tags": st.text(max_size=3)},
    optional={"other": values},
)
any_event = st.dictionaries(st.sampled_from(["user", "city", "tags", "other"]), values)


@settings(max_examples=150, deadline=None)
@given(
    sparse=st.lists(st.one_of(plain_event, any_event), min_size=0, max_size=6),
    dense=st.lists(st.dictionaries(st.sampled_from(["price", "age", "x"]), st.floats(-1e6, 1e6)), max_size=6),
    labelled=st.booleans(),
)
def test_same_batch_as_the_general_featurizer(sparse: list[dict], dense: list[dict], labelled: bool) -> None:
    label = (lambda i: i % 2) if labelled else (lambda i: None)
    events = [
        Event(event_id=f"e{i}", ts=i, sparse=s, dense=dense[i] if i < len(dense) else {}, label=label(i))
        for i, s in enumerate(sparse)
    ]
    serving = ServingFeaturizer(SCHEMA, cache_size=4)  # small: the memory is cleared along the way
    general = Featurizer(SCHEMA)
    try:
        want = general(events)
    except ValueError as exc:
        with pytest.raises(ValueError, match="^" + re.escape(str(exc)) + "$"):
            serving(events)
        return
    assert_same(serving(events), want)
    assert_same(serving(events), want)  # the second time from remembered fingerprints


def test_plain_small_batches_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    serving = ServingFeaturizer(SCHEMA, max_events=2)
    calls = []
    real = serving.general.__call__
    monkeypatch.setattr(serving, "general", lambda events: calls.append(len(events)) or real(events))
    plain = [Event(event_id=f"e{i}", ts=i, sparse={"user": i, "city": "x", "tags": "t"}) for i in range(3)]
    assert_same(serving(plain[:2]), Featurizer(SCHEMA)(plain[:2]))
    assert calls == []
    serving(plain)  # more than max_events
    serving([Event(event_id="e", ts=0, sparse={"user": 1, "city": "x", "tags": ["t"]})])  # a list
    assert calls == [3, 1]
