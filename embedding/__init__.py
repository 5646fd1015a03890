"""The model library shared by the trainer and the inference service: feature schemas, hashing,
every embedding method, the DCN-v2 model, export and the serving modules. No Kafka, Redis or HTTP."""

from embedding.errors import ArtifactError, EmbeddingError, SchemaError
from embedding.events import Event, FeatureBatch, Featurizer, decode_event, encode_event
from embedding.hashing import UniversalHash, derive_seed, fingerprint
from embedding.schema import DenseFeature, FeatureSchema, SparseFeature, load_schema

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
