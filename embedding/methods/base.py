"""What every embedding method is: a module from a KeyedJaggedTensor of fingerprints to one pooled
vector per feature, which can say how many parameters and bytes it holds."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from embedding.schema import FeatureSchema


class EmbeddingMethod(nn.Module, abc.ABC):
    """Base class. `forward(kjt)` takes fingerprints keyed by the schema's sparse features (any
    order, each key a bag per example) and returns a KeyedTensor with one key per sparse feature
    in schema order, of width `schema.width(name)` (= lookups * d)."""

    method: ClassVar[str]

    def __init__(self, schema: FeatureSchema) -> None:
        super().__init__()
        self.schema = schema

    @abc.abstractmethod
    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor: ...

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """The constructor arguments besides the schema (JSON-serialisable): enough to rebuild it."""

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def num_bytes(self) -> int:
        """Bytes of trainable parameters as stored for training (fp32)."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def output(self, per_feature: list[torch.Tensor]) -> KeyedTensor:
        """Wrap per-feature [batch, width] tensors (schema order) as a KeyedTensor."""
        return KeyedTensor(
            keys=self.schema.sparse_names,
            length_per_key=[t.shape[1] for t in per_feature],
            values=torch.cat(per_feature, dim=1),
        )

    def mean_divisors(self, features: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
        """For mean-pooled features: bag lengths as a [batch, 1] float divisor (at least 1)."""
        out: dict[str, torch.Tensor] = {}
        for spec in self.schema.sparse:
            if spec.pooling == "mean":
                lengths = features[spec.name].lengths()
                out[spec.name] = lengths.clamp(min=1).to(torch.float32).unsqueeze(1)
        return out


_REGISTRY: dict[str, type[EmbeddingMethod]] = {}


def register(cls: type[EmbeddingMethod]) -> type[EmbeddingMethod]:
    if cls.method in _REGISTRY:
        raise ValueError(f"embedding method {cls.method!r} registered twice")
    _REGISTRY[cls.method] = cls
    return cls


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def build_method(method: str, schema: FeatureSchema, **config: Any) -> EmbeddingMethod:
    """Build a registered method by name with the arguments its `config()` returned."""
    try:
        cls = _REGISTRY[method]
    except KeyError:
        raise ValueError(f"unknown embedding method {method!r}; known: {method_names()}") from None
    return cls(schema, **config)
