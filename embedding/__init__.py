"""The model library shared by the trainer and the inference service: feature schemas, hashing,
every embedding method, the DCN-v2 model, export and the serving modules. No Kafka, Redis or HTTP.

Names are imported on first use (PEP 562), so tools that only need the event or schema types (the
producer, the CLI) do not pay for importing torch and TorchRec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_exports

_EXPORTS = {
    "ArtifactError": "embedding.errors",
    "EmbeddingError": "embedding.errors",
    "SchemaError": "embedding.errors",
    "Event": "embedding.events",
    "FeatureBatch": "embedding.events",
    "Featurizer": "embedding.events",
    "decode_event": "embedding.events",
    "encode_event": "embedding.events",
    "UniversalHash": "embedding.hashing",
    "derive_seed": "embedding.hashing",
    "fingerprint": "embedding.hashing",
    "DenseFeature": "embedding.schema",
    "FeatureSchema": "embedding.schema",
    "SparseFeature": "embedding.schema",
    "load_schema": "embedding.schema",
}

__all__ = [
    "ArtifactError",
    "DenseFeature",
    "EmbeddingError",
    "Event",
    "FeatureBatch",
    "FeatureSchema",
    "Featurizer",
    "SchemaError",
    "SparseFeature",
    "UniversalHash",
    "decode_event",
    "derive_seed",
    "encode_event",
    "fingerprint",
    "load_schema",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from embedding.errors import ArtifactError, EmbeddingError, SchemaError
    from embedding.events import Event, FeatureBatch, Featurizer, decode_event, encode_event
    from embedding.hashing import UniversalHash, derive_seed, fingerprint
    from embedding.schema import DenseFeature, FeatureSchema, SparseFeature, load_schema
