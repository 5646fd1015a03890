from __future__ import annotations

import torch

from embedding import Event, Featurizer, load_schema
from trainer.loop import pad_batch


def test_padding_adds_empty_zero_weight_examples() -> None:
    schema = load_schema("movielens")
    events = [
        Event(event_id=str(i), ts=i, label=i % 2, sparse={"user": i, "movie": 7, "gender": "F"}) for i in range(3)
    ]
    batch = Featurizer(schema)(events)
    sparse, dense, labels, weights = pad_batch(batch, 8)
    assert sparse.stride() == 8
    for name in schema.sparse_names:
        original, padded = batch.sparse[name], sparse[name]
        assert torch.equal(padded.lengths()[:3], original.lengths())
        assert torch.equal(padded.lengths()[3:], torch.zeros(5, dtype=padded.lengths().dtype))
        assert torch.equal(padded.values(), original.values())
    assert dense.shape == (8, 0)
    assert labels.tolist() == [0, 1, 0, 0, 0, 0, 0, 0]
    assert weights.tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
