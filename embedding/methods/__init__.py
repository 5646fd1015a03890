"""Embedding methods: each an nn.Module from a KeyedJaggedTensor of fingerprints to pooled vectors."""

from embedding.methods.base import EmbeddingMethod, build_method, method_names, register
from embedding.methods.unified import UnifiedEmbedding

__all__ = ["EmbeddingMethod", "UnifiedEmbedding", "build_method", "method_names", "register"]
