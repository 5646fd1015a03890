"""The event: one labelled impression, as it travels on Kafka and arrives at `/v1/predict`.

JSON by default (one object per Kafka message):

    {"event_id": "u196-i242-881250949", "ts": 881250949000, "label": 1,
     "dense": {"age": 49.0}, "sparse": {"user": 196, "movie": 242, "genres": ["comedy", "drama"]}}

`ts` is event time in milliseconds since the Unix epoch; `label` is 0/1 (absent at inference);
sparse values are ints, strings, or lists of them (multivalent features). The `Featurizer`
turns a batch of events into model inputs: a KeyedJaggedTensor of 64-bit fingerprints (one key per
sparse feature of the schema), a dense matrix and the labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import msgspec
import numpy as np

from embedding.hashing import fingerprint

if TYPE_CHECKING:  # torch and TorchRec load with the first featurized batch, not with the event type
    import torch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from embedding.schema import FeatureSchema

SparseValue = int | str | list[int | str]


class Event(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    ts: Annotated[int, msgspec.Meta(ge=0)]
    label: Annotated[int, msgspec.Meta(ge=0, le=1)] | None = None
    dense: dict[str, float] = {}
    sparse: dict[str, SparseValue] = {}


_json_decoder = msgspec.json.Decoder(Event)
_json_encoder = msgspec.json.Encoder()


def decode_event(payload: bytes) -> Event:
    """Decode and validate one JSON event; raises msgspec.ValidationError/DecodeError with the path."""
    return _json_decoder.decode(payload)


def encode_event(event: Event) -> bytes:
    return _json_encoder.encode(event)


@dataclass
class FeatureBatch:
    """Model inputs for a batch of events."""

    sparse: KeyedJaggedTensor
    """Fingerprints per sparse feature of the schema, in schema order."""
    dense: torch.Tensor
    """float32 [batch, n_dense] after the schema's transforms and defaults."""
    labels: torch.Tensor | None
    """float32 [batch], or None when any event has no label."""
    missing: dict[str, int] = field(default_factory=dict)
    """Per sparse feature: how many events lacked it (they got an empty bag)."""
    unknown: set[str] = field(default_factory=set)
    """Feature names present in events that the schema does not know."""

    def __len__(self) -> int:
        return self.dense.shape[0]


class Featurizer:
    """Events -> FeatureBatch for one feature schema. Stateless; safe to share between threads."""

    def __init__(self, schema: FeatureSchema) -> None:
        self.schema = schema
        self._sparse = schema.sparse
        self._dense = schema.dense
        self._known = set(schema.sparse_names) | set(schema.dense_names)

    def __call__(self, events: Sequence[Event]) -> FeatureBatch:
        import torch
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        n = len(events)
        lengths = np.zeros((len(self._sparse), n), dtype=np.int64)
        chunks: list[np.ndarray] = []
        missing: dict[str, int] = {}
        for i, spec in enumerate(self._sparse):
            name = spec.name
            flat: list[object] = []
            lens = lengths[i]
            absent = 0
            for j, event in enumerate(events):
                value = event.sparse.get(name)
                if value is None:
                    absent += 1
                elif isinstance(value, list):
                    flat.extend(value)
                    lens[j] = len(value)
                else:
                    flat.append(value)
                    lens[j] = 1
            if absent:
                missing[name] = absent
            try:
                chunks.append(fingerprint(flat, spec.dtype) if flat else np.empty(0, dtype=np.int64))
            except ValueError as exc:
                raise ValueError(f"sparse feature {name!r}: {exc}") from exc
        values = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=self.schema.sparse_names,
            values=torch.from_numpy(values),
            lengths=torch.from_numpy(lengths.reshape(-1)),
        )
        dense = np.empty((n, len(self._dense)), dtype=np.float32)
        for k, spec in enumerate(self._dense):
            dense[:, k] = [event.dense.get(spec.name, spec.default) for event in events]
            if spec.transform == "log1p":
                dense[:, k] = np.sign(dense[:, k]) * np.log1p(np.abs(dense[:, k]))
        labels = None
        if n and all(event.label is not None for event in events):
            labels = torch.tensor([event.label for event in events], dtype=torch.float32)
        unknown: set[str] = set()
        for event in events:
            for key in event.sparse:
                if key not in self._known:
                    unknown.add(key)
            for key in event.dense:
                if key not in self._known:
                    unknown.add(key)
        return FeatureBatch(kjt, torch.from_numpy(dense), labels, missing, unknown)
