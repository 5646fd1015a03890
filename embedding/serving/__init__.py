"""Inference-side modules built from exported artifacts (quantised lookups, the same DCNModel code)."""

from embedding.serving.model import ServingModel, load_delta, load_serving_model
from embedding.serving.tables import QuantEmbeddingBags

__all__ = ["QuantEmbeddingBags", "ServingModel", "load_delta", "load_serving_model"]
