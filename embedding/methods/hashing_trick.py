"""Hashing trick: one hashed table per feature (Weinberger et al.), sized by the feature's share of
the vocabulary as in the unified-embedding paper's baselines. Values of one feature collide with
each other, never with other features' values. A feature of width k*d has a k*d-wide table."""

from __future__ import annotations

from typing import Any

import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from embedding.hashing import UniversalHash
from embedding.methods._ops import allocate, jagged, mean_pool_fix, seeded_hash, table
from embedding.methods.base import EmbeddingMethod, register
from embedding.schema import FeatureSchema


@register
class HashingTrick(EmbeddingMethod):
    """Either `rows` (per feature, exact) or `num_rows` (total, split by vocab_size share)."""

    method = "hashing_trick"

    def __init__(
        self,
        schema: FeatureSchema,
        rows: dict[str, int] | None = None,
        num_rows: int | None = None,
        seed: int = 0,
        init_std: float = 0.01,
        device: str = "cpu",
    ) -> None:
        super().__init__(schema)
        self.rows = _resolve_rows(schema, rows, num_rows)
        self.seed = seed
        self.init_std = init_std
        self.hashes = [self.hash_for(spec.name) for spec in schema.sparse]
        tables = [
            table(self.table_name(spec.name), self.rows[spec.name], schema.width(spec.name), [spec.name], init_std)
            for spec in schema.sparse
        ]
        self.ebc = EmbeddingBagCollection(tables=tables, device=torch.device(device))

    @staticmethod
    def table_name(feature: str) -> str:
        return f"hash_{feature}"

    def hash_for(self, feature: str) -> UniversalHash:
        return seeded_hash(self.method, self.seed, self.rows[feature], feature)

    def config(self) -> dict[str, Any]:
        return {"rows": dict(self.rows), "seed": self.seed, "init_std": self.init_std}

    def routed(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """The input with fingerprints replaced by table rows (what the EBC consumes)."""
        bags = jagged(features, self.schema)
        values = [h(bags[s.name].values()) for s, h in zip(self.schema.sparse, self.hashes, strict=True)]
        lengths = [bags[s.name].lengths() for s in self.schema.sparse]
        return KeyedJaggedTensor(keys=self.schema.sparse_names, values=torch.cat(values), lengths=torch.cat(lengths))

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        bags = jagged(features, self.schema)
        pooled = self.ebc(self.routed(features)).to_dict()
        per_feature = [pooled[name] for name in self.schema.sparse_names]
        return self.output(mean_pool_fix(self.schema, bags, per_feature))


def _resolve_rows(schema: FeatureSchema, rows: dict[str, int] | None, num_rows: int | None) -> dict[str, int]:
    if (rows is None) == (num_rows is None):
        raise ValueError(
            f"give exactly one of rows (per feature) or num_rows (total); got rows={rows} num_rows={num_rows}"
        )
    if rows is None:
        assert num_rows is not None
        if num_rows < len(schema.sparse):
            raise ValueError(f"num_rows={num_rows} is fewer than one row per feature ({len(schema.sparse)})")
        return allocate(num_rows, schema)
    names = schema.sparse_names
    if sorted(rows) != sorted(names):
        raise ValueError(f"rows must name exactly the schema's sparse features {names}; got {sorted(rows)}")
    bad = {n: r for n, r in rows.items() if int(r) < 1}
    if bad:
        raise ValueError(f"every feature needs at least one row; got {bad}")
    return {n: int(rows[n]) for n in names}
