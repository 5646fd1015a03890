"""Collisionless-with-eviction baseline: TorchRec managed collisions (ZCH).

One table of `zch_size` rows per feature behind an `MCHManagedCollisionModule` with DistanceLFU
eviction (`ManagedCollisionEmbeddingBagCollection`): fingerprints are remapped to rows of their own
while they are frequent (and recent) enough; every `eviction_interval` training steps the module
evicts the least valuable ids and admits the new ones. Until admitted, an id maps to the table's
last row, as TorchRec does. The id-to-row mapping lives in the module's buffers (state dict).
"""

from __future__ import annotations

from typing import Any

import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection
from torchrec.modules.mc_modules import (
    DistanceLFU_EvictionPolicy,
    ManagedCollisionCollection,
    MCHManagedCollisionModule,
)
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from embedding.methods._ops import allocate, jagged, mean_pool_fix, table
from embedding.methods.base import EmbeddingMethod, register
from embedding.schema import FeatureSchema

_ID_MASK = (1 << 62) - 1  # MCH reserves int64 max as its empty-slot sentinel: keep ids well below it


@register
class ManagedCollisionEmbedding(EmbeddingMethod):
    """`rows` per feature, or `num_rows` in total split by vocabulary share."""

    method = "managed_collision"

    def __init__(
        self,
        schema: FeatureSchema,
        rows: dict[str, int] | None = None,
        num_rows: int | None = None,
        eviction_interval: int = 100,
        decay_exponent: float = 1.0,
        init_std: float = 0.01,
        device: str = "cpu",
    ) -> None:
        super().__init__(schema)
        if (rows is None) == (num_rows is None):
            raise ValueError(f"give exactly one of rows or num_rows; got rows={rows} num_rows={num_rows}")
        per = dict(rows) if rows is not None else allocate(int(num_rows or 0), schema, minimum=2)
        self.rows = {n: int(per[n]) for n in schema.sparse_names}
        self.eviction_interval, self.decay_exponent, self.init_std = eviction_interval, decay_exponent, init_std
        dev = torch.device(device)
        tables = [table(f"zch_{n}", self.rows[n], schema.width(n), [n], init_std) for n in schema.sparse_names]
        mcc = ManagedCollisionCollection(
            managed_collision_modules={
                f"zch_{n}": MCHManagedCollisionModule(
                    zch_size=self.rows[n],
                    device=dev,
                    eviction_policy=DistanceLFU_EvictionPolicy(decay_exponent=decay_exponent),
                    eviction_interval=eviction_interval,
                    input_hash_size=_ID_MASK + 1,
                )
                for n in schema.sparse_names
            },
            embedding_configs=tables,
        )
        self.mc_ebc = ManagedCollisionEmbeddingBagCollection(EmbeddingBagCollection(tables=tables, device=dev), mcc)

    @property
    def ebc(self) -> EmbeddingBagCollection:
        return self.mc_ebc._embedding_bag_collection

    def config(self) -> dict[str, Any]:
        return {
            "rows": dict(self.rows),
            "eviction_interval": self.eviction_interval,
            "decay_exponent": self.decay_exponent,
            "init_std": self.init_std,
        }

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        bags = jagged(features, self.schema)
        names = self.schema.sparse_names
        kjt = KeyedJaggedTensor(
            keys=names,
            values=torch.cat([bags[n].values() & _ID_MASK for n in names]),
            lengths=torch.cat([bags[n].lengths() for n in names]),
        )
        pooled, _ = self.mc_ebc(kjt)
        per = pooled.to_dict()
        return self.output(mean_pool_fix(self.schema, bags, [per[n] for n in names]))
