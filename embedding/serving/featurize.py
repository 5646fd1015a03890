"""Featurization at serving: the `Featurizer`'s batch, with the fingerprints of recent values remembered.

A serving request is a few events in which every sparse feature has one value of its declared
type. The general `Featurizer` handles any batch with numpy calls per feature and dtype, which
at batch 1 cost several times the model's forward; a fingerprint depends on the value alone, so
`ServingFeaturizer` keeps the fingerprints of the values it has seen (per feature, bounded) and
builds the KeyedJaggedTensor with its metadata known, for such batches of up to `max_events`
events. Any other batch (lists, missing or mistyped values, bigger batches) goes to the general
`Featurizer`, which also produces every error. Both give the same `FeatureBatch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from embedding.events import Event, FeatureBatch, Featurizer
from embedding.hashing import fingerprint
from embedding.schema import FeatureSchema

_PLAIN = {"int": int, "str": str}
_INT64 = (-(2**63), 2**63)


class ServingFeaturizer:
    def __init__(self, schema: FeatureSchema, max_events: int = 4096, cache_size: int = 1 << 16) -> None:
        """`cache_size`: fingerprints remembered per feature (the memory is cleared when full)."""
        self.schema = schema
        self.general = Featurizer(schema)
        # dense columns and unknown names exactly as the general path computes them
        self._dense_features, self._unknown = self.general.dense_features, self.general.unknown
        self.max_events = max_events
        self.cache_size = cache_size
        self._sparse = [(spec.name, _PLAIN[spec.dtype], spec.dtype) for spec in schema.sparse]
        self._names = schema.sparse_names
        self._caches: list[dict[object, int]] = [{} for _ in self._sparse]

    def __call__(self, events: Sequence[Event]) -> FeatureBatch:
        n = len(events)
        if not 0 < n <= self.max_events:
            return self.general(events)
        sparse_maps = [event.sparse for event in events]
        values: list[int] = []
        for (name, kind, dtype), cache in zip(self._sparse, self._caches, strict=True):
            column = list(map(dict.get, sparse_maps, repeat(name)))
            if set(map(type, column)) != {kind}:
                return self.general(events)
            known = list(map(cache.get, column))
            if None in known and not self._fill(column, known, cache, dtype):
                return self.general(events)
            values.extend(known)  # type: ignore[arg-type]
        n_sparse = len(self._names)
        kjt = KeyedJaggedTensor(
            keys=self._names,
            values=torch.from_numpy(np.array(values, dtype=np.int64)),
            lengths=torch.ones(n_sparse * n, dtype=torch.int64),
            stride=n,
            length_per_key=[n] * n_sparse,
            offset_per_key=list(range(0, n * n_sparse + 1, n)),
        )
        label_list = [event.label for event in events]
        labels = None if None in label_list else torch.tensor(label_list, dtype=torch.float32)
        return FeatureBatch(kjt, torch.from_numpy(self._dense_features(events)), labels, {}, self._unknown(events))

    def _fill(self, column: list[object], known: list[int | None], cache: dict[object, int], dtype: str) -> bool:
        """Fingerprint the values not remembered yet (in one call); False when one needs the general path."""
        misses = [i for i, fp in enumerate(known) if fp is None]
        fresh = [column[i] for i in misses]
        if dtype == "int" and any(not _INT64[0] <= v < _INT64[1] for v in fresh):  # type: ignore[operator]
            return False  # beyond int64: the general path's coercion decides
        if len(cache) + len(fresh) > self.cache_size:
            cache.clear()
        for i, fp in zip(misses, fingerprint(fresh, dtype).tolist(), strict=True):
            known[i] = fp
            cache[column[i]] = fp
        return True
