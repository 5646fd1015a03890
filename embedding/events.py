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
    """Events -> FeatureBatch for one feature schema. Stateless; safe to share between threads.

    Vectorised per batch: each feature's values are gathered as one column; plain columns (every
    event has one value of the feature's own Python type) skip the per-event loop; the int
    features' values are fingerprinted in one call and the str features' in another (a fingerprint
    depends on the value alone); the KJT is built once. Other columns (lists, missing values,
    values to coerce) take the general path, which is the per-event definition itself.
    """

    def __init__(self, schema: FeatureSchema) -> None:
        self.schema = schema
        self._sparse = schema.sparse
        self._dense = schema.dense
        self._known = set(schema.sparse_names) | set(schema.dense_names)

    def __call__(self, events: Sequence[Event]) -> FeatureBatch:
        import torch
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        n = len(events)
        sparse_maps = [event.sparse for event in events]
        lengths = np.zeros((len(self._sparse), n), dtype=np.int64)
        chunks: list[np.ndarray | None] = [None] * len(self._sparse)
        plain: dict[str, list[tuple[int, list[object]]]] = {"int": [], "str": []}
        missing: dict[str, int] = {}
        for i, spec in enumerate(self._sparse):
            name = spec.name
            column = [m.get(name) for m in sparse_maps]
            kinds = set(map(type, column))
            if n and kinds == {_PLAIN[spec.dtype]}:  # one value of the declared type per event
                lengths[i] = 1
                plain[spec.dtype].append((i, column))
                continue
            flat: list[object] = []
            lens = lengths[i]
            absent = 0
            for j, value in enumerate(column):
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
            chunks[i] = self._fingerprint(name, flat, spec.dtype)
        for dtype, columns in plain.items():
            if columns:
                self._fingerprint_plain(dtype, columns, chunks)
        values = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=self.schema.sparse_names,
            values=torch.from_numpy(values),
            lengths=torch.from_numpy(lengths.reshape(-1)),
        )
        labels = None
        if n:
            label_list = [event.label for event in events]
            if None not in label_list:
                labels = torch.tensor(label_list, dtype=torch.float32)
        return FeatureBatch(kjt, torch.from_numpy(self.dense_features(events)), labels, missing, self.unknown(events))

    def dense_features(self, events: Sequence[Event]) -> np.ndarray:
        """[events, dense features] float32: the schema's defaults for absent values, then its transforms."""
        dense = np.empty((len(events), len(self._dense)), dtype=np.float32)
        if self._dense:
            dense_maps = [event.dense for event in events]
            for k, spec in enumerate(self._dense):
                dense[:, k] = [m.get(spec.name, spec.default) for m in dense_maps]
                if spec.transform == "log1p":
                    dense[:, k] = np.sign(dense[:, k]) * np.log1p(np.abs(dense[:, k]))
        return dense

    def unknown(self, events: Sequence[Event]) -> set[str]:
        """Feature names the events carry that the schema does not declare."""
        seen: set[str] = set()
        for event in events:
            seen.update(event.sparse)
            if event.dense:
                seen.update(event.dense)
        return seen - self._known

    @staticmethod
    def _fingerprint(name: str, flat: list[object], dtype: str) -> np.ndarray:
        if not flat:
            return np.empty(0, dtype=np.int64)
        try:
            return fingerprint(flat, dtype)
        except ValueError as exc:
            raise ValueError(f"sparse feature {name!r}: {exc}") from exc

    def _fingerprint_plain(
        self, dtype: str, columns: list[tuple[int, list[object]]], chunks: list[np.ndarray | None]
    ) -> None:
        """Fingerprint several plain columns of one dtype in one call; fill their chunks."""
        if dtype == "int":
            arrays = []
            for i, column in columns:
                try:
                    arrays.append(np.array(column, dtype=np.int64))
                except OverflowError:  # beyond int64: the general path's coercion decides
                    chunks[i] = self._fingerprint(self._sparse[i].name, column, dtype)
                    arrays.append(np.empty(0, dtype=np.int64))
            joined = fingerprint(np.concatenate(arrays), "int")
        else:
            arrays = [np.array(column, dtype=object) for _, column in columns]
            joined = fingerprint(np.concatenate(arrays), "str")
        offset = 0
        for (i, _), array in zip(columns, arrays, strict=True):
            if chunks[i] is None:
                chunks[i] = joined[offset : offset + array.size]
            offset += array.size


_PLAIN = {"int": int, "str": str}
