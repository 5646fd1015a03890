"""Embedding methods: each an nn.Module from a KeyedJaggedTensor of fingerprints to pooled vectors.

Registered names (for `build_method` / `ModelConfig.method`): unified, collisionless,
hashing_trick, hash_embedding, robe (HashedNet/ROBE-1 with block=1, ROBE-Z, ROBE-D),
compositional (QR, CRT, PQ, path-based), mlet, managed_collision. The multiplexed variants are the
`multiplexed=True` configurations of hash_embedding, robe and compositional.
"""

from embedding.methods.base import EmbeddingMethod, build_method, method_names, register
from embedding.methods.collisionless import Collisionless
from embedding.methods.compositional import CompositionalEmbedding, partition_indices
from embedding.methods.hash_embedding import HashEmbedding
from embedding.methods.hashing_trick import HashingTrick
from embedding.methods.managed import ManagedCollisionEmbedding
from embedding.methods.mlet import MLETEmbedding
from embedding.methods.robe import RobeEmbedding, robe_reference
from embedding.methods.unified import UnifiedEmbedding

__all__ = [
    "Collisionless",
    "CompositionalEmbedding",
    "EmbeddingMethod",
    "HashEmbedding",
    "HashingTrick",
    "MLETEmbedding",
    "ManagedCollisionEmbedding",
    "RobeEmbedding",
    "UnifiedEmbedding",
    "build_method",
    "method_names",
    "partition_indices",
    "register",
    "robe_reference",
]
