"""Inference-side modules built from exported artifacts (quantised lookups, the same DCNModel code)."""

from embedding.serving.model import ServingModel, model_from_source
from embedding.serving.tables import QuantEmbeddingBags

__all__ = ["QuantEmbeddingBags", "ServingModel", "model_from_source"]
