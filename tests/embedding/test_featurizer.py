"""The vectorised Featurizer gives exactly what the per-event definition gives (the implementation
it replaced, kept here as the reference): on ML-100k, on generated events with every shape of value
(missing, lists, empty lists, values to coerce, unknown features), and with the same errors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embedding.events import Event, FeatureBatch, Featurizer
from embedding.hashing import fingerprint
from embedding.schema import DenseFeature, FeatureSchema, SparseFeature, load_schema


def reference_featurize(schema: FeatureSchema, events: Sequence[Event]) -> FeatureBatch:
    """The definition: one pass per feature over the events, one fingerprint call per feature."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    known = set(schema.sparse_names) | set(schema.dense_names)
    n = len(events)
    lengths = np.zeros((len(schema.sparse), n), dtype=np.int64)
    chunks: list[np.ndarray] = []
    missing: dict[str, int] = {}
    for i, spec in enumerate(schema.sparse):
        flat: list[object] = []
        absent = 0
        for j, event in enumerate(events):
            value = event.sparse.get(spec.name)
            if value is None:
                absent += 1
            elif isinstance(value, list):
                flat.extend(value)
                lengths[i, j] = len(value)
            else:
                flat.append(value)
                lengths[i, j] = 1
        if absent:
            missing[spec.name] = absent
        try:
            chunks.append(fingerprint(flat, spec.dtype) if flat else np.empty(0, dtype=np.int64))
        except ValueError as exc:
            raise ValueError(f"sparse feature {spec.name!r}: {exc}") from exc
    values = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=schema.sparse_names, values=torch.from_numpy(values), lengths=torch.from_numpy(lengths.reshape(-1))
    )
    dense = np.empty((n, len(schema.dense)), dtype=np.float32)
    for k, spec in enumerate(schema.dense):
        dense[:, k] = [event.dense.get(spec.name, spec.default) for event in events]
        if spec.transform == "log1p":
            dense[:, k] = np.sign(dense[:, k]) * np.log1p(np.abs(dense[:, k]))
    labels = None
    if n and all(event.label is not None for event in events):
        labels = torch.tensor([event.label for event in events], dtype=torch.float32)
    unknown = {k for e in events for k in (*e.sparse, *e.dense) if k not in known}
    return FeatureBatch(kjt, torch.from_numpy(dense), labels, missing, unknown)


def assert_same(got: FeatureBatch, want: FeatureBatch) -> None:
    assert got.sparse.keys() == want.sparse.keys()
    assert torch.equal(got.sparse.values(), want.sparse.values())
    assert torch.equal(got.sparse.lengths(), want.sparse.lengths())
    assert got.sparse.length_per_key() == want.sparse.length_per_key()
    assert torch.equal(got.dense, want.dense)
    assert (got.labels is None) == (want.labels is None)
    if want.labels is not None:
        assert torch.equal(got.labels, want.labels)
    assert got.missing == want.missing
    assert got.unknown == want.unknown


def test_movielens_batches_equal_the_reference() -> None:
    from services.replay.reader import iter_events

    schema = load_schema("movielens")
    events = list(iter_events("movielens", limit=5000))
    featurize = Featurizer(schema)
    for size in (1, 64, 1000, 5000):
        for start in range(0, len(events), max(size, 997)):
            chunk = events[start : start + size]
            assert_same(featurize(chunk), reference_featurize(schema, chunk))


SCHEMA = FeatureSchema(
    name="featurizer-test",
    embedding_dim=4,
    sparse=(
        SparseFeature(name="user", dtype="int"),
        SparseFeature(name="city", dtype="str"),
        SparseFeature(name="tags", dtype="str", multivalent=True),
        SparseFeature(name="items", dtype="int", multivalent=True),
    ),
    dense=(DenseFeature(name="age", default=30.0), DenseFeature(name="spend", transform="log1p")),
)

_int = st.integers(-(2**63), 2**63 - 1)
_text = st.text(max_size=6)
_value = st.one_of(st.none(), _int, _text, st.lists(st.one_of(_int, st.integers(0, 9).map(str)), max_size=3))


@st.composite
def events(draw: st.DrawFn) -> list[Event]:
    n = draw(st.integers(0, 12))
    out = []
    for i in range(n):
        sparse: dict[str, object] = {}
        for name in ("user", "city", "tags", "items", "other"):
            value = draw(_value)
            if name == "user" and draw(st.booleans()):
                value = draw(_int)  # mostly plain columns, sometimes not
            if value is not None:
                sparse[name] = value
        dense = {k: draw(st.floats(-1e3, 1e3)) for k in ("age", "spend", "extra") if draw(st.booleans())}
        label = None if draw(st.integers(0, 9)) == 0 else draw(st.integers(0, 1))
        out.append(Event(event_id=f"e{i}", ts=i, label=label, sparse=sparse, dense=dense))  # type: ignore[arg-type]
    return out


@settings(max_examples=300, deadline=None)
@given(batch=events())
def test_generated_events_equal_the_reference_or_fail_alike(batch: list[Event]) -> None:
    try:
        want = reference_featurize(SCHEMA, batch)
    except ValueError as exc:
        with pytest.raises(ValueError) as got:
            Featurizer(SCHEMA)(batch)
        assert str(got.value) == str(exc)
        return
    assert_same(Featurizer(SCHEMA)(batch), want)


def test_plain_columns_of_every_dtype_and_coercions() -> None:
    batch = [
        Event(event_id=str(i), ts=i, label=i % 2,
              sparse={"user": i * 7919, "city": f"c{i % 3}", "tags": ["a", "b"][: i % 3], "items": [i, -i]})
        for i in range(50)
    ]  # fmt: skip
    assert_same(Featurizer(SCHEMA)(batch), reference_featurize(SCHEMA, batch))
    coerced = [Event(event_id="x", ts=0, label=1, sparse={"user": "7", "city": 7, "items": [2**64 - 1]})]
    assert_same(Featurizer(SCHEMA)(coerced), reference_featurize(SCHEMA, coerced))
    huge = [Event(event_id=str(i), ts=0, label=1, sparse={"user": 2**63 + i}) for i in range(3)]
    assert_same(Featurizer(SCHEMA)(huge), reference_featurize(SCHEMA, huge))
    with pytest.raises(ValueError, match="sparse feature 'user'.*'abc'"):
        Featurizer(SCHEMA)([Event(event_id="y", ts=0, sparse={"user": "abc"})])
