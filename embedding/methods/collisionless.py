"""Collisionless embeddings: one full table per feature with a row for every known value.

Each feature holds its vocabulary as a sorted int64 buffer of fingerprints (`vocab_<i>`, i the
feature's index in the schema, so it is saved and exported with the state dict). A fingerprint maps
to its position (`torch.searchsorted`, vectorised); one not in the vocabulary maps to the reserved
OOV row (the last row). Build it from data with `fit` or from known values with `from_vocabulary`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from embedding.methods._ops import jagged, mean_pool_fix, table
from embedding.methods.base import EmbeddingMethod, register
from embedding.schema import FeatureSchema


@register
class Collisionless(EmbeddingMethod):
    """`vocab_sizes[f]` distinct values per feature; the table of f has vocab_sizes[f] + 1 rows."""

    method = "collisionless"

    def __init__(
        self,
        schema: FeatureSchema,
        vocab_sizes: dict[str, int],
        init_std: float = 0.01,
        device: str = "cpu",
    ) -> None:
        super().__init__(schema)
        names = schema.sparse_names
        if sorted(vocab_sizes) != sorted(names):
            raise ValueError(f"vocab_sizes must name exactly {names}; got {sorted(vocab_sizes)}")
        self.vocab_sizes = {n: int(vocab_sizes[n]) for n in names}
        self.init_std = init_std
        for i, name in enumerate(names):
            # placeholder contents until fit/from_vocabulary/load_state_dict fill them
            self.register_buffer(f"vocab_{i}", torch.zeros(self.vocab_sizes[name], dtype=torch.int64))
        tables = [table(self.table_name(n), self.vocab_sizes[n] + 1, schema.width(n), [n], init_std) for n in names]
        self.ebc = EmbeddingBagCollection(tables=tables, device=torch.device(device))

    @staticmethod
    def table_name(feature: str) -> str:
        return f"full_{feature}"

    def vocabulary(self, feature: str) -> torch.Tensor:
        return getattr(self, f"vocab_{self.schema.sparse_names.index(feature)}")

    @classmethod
    def from_vocabulary(
        cls, schema: FeatureSchema, vocabularies: Mapping[str, np.ndarray | torch.Tensor], **kwargs: Any
    ) -> Collisionless:
        """Build with the given fingerprints (any order, duplicates allowed) as each feature's rows."""
        uniq = {
            n: torch.unique(torch.as_tensor(np.asarray(vocabularies.get(n, [])), dtype=torch.int64))
            for n in schema.sparse_names
        }
        module = cls(schema, {n: int(u.numel()) for n, u in uniq.items()}, **kwargs)
        for n, u in uniq.items():
            module.vocabulary(n).copy_(u)  # torch.unique sorts
        return module

    @classmethod
    def fit(cls, schema: FeatureSchema, batches: Iterable[KeyedJaggedTensor], **kwargs: Any) -> Collisionless:
        """Build from every value seen in `batches` (KJTs of fingerprints)."""
        seen: dict[str, list[torch.Tensor]] = {n: [] for n in schema.sparse_names}
        for kjt in batches:
            for name, bag in jagged(kjt, schema).items():
                seen[name].append(torch.unique(bag.values()))
        vocab = {n: torch.unique(torch.cat(v)) if v else torch.empty(0, dtype=torch.int64) for n, v in seen.items()}
        return cls.from_vocabulary(schema, vocab, **kwargs)

    def config(self) -> dict[str, Any]:
        return {"vocab_sizes": dict(self.vocab_sizes), "init_std": self.init_std}

    def rows_for(self, feature: str, values: torch.Tensor) -> torch.Tensor:
        """Row of each fingerprint: its position in the sorted vocabulary, or the OOV row."""
        vocab = self.vocabulary(feature)
        n = vocab.numel()
        if n == 0:
            return torch.zeros_like(values)
        pos = torch.searchsorted(vocab, values)
        found = vocab[pos.clamp(max=n - 1)] == values
        return torch.where(found, pos, torch.full_like(pos, n))

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        bags = jagged(features, self.schema)
        names = self.schema.sparse_names
        kjt = KeyedJaggedTensor(
            keys=names,
            values=torch.cat([self.rows_for(n, bags[n].values()) for n in names]),
            lengths=torch.cat([bags[n].lengths() for n in names]),
        )
        pooled = self.ebc(kjt).to_dict()
        return self.output(mean_pool_fix(self.schema, bags, [pooled[n] for n in names]))
