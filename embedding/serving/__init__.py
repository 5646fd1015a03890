"""Inference-side modules built from exported artifacts (quantised lookups, the same DCNModel code)."""

from embedding.serving.featurize import ServingFeaturizer
from embedding.serving.model import Scored, ServingModel, model_from_source
from embedding.serving.tables import QuantEmbeddingBags

__all__ = ["QuantEmbeddingBags", "Scored", "ServingFeaturizer", "ServingModel", "model_from_source"]
