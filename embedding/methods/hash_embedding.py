"""Hash embeddings (Svenstrup et al. 2017), the unified-embedding paper's "multihash" baseline.

Value x of a feature looks up `num_hashes` rows h_1(x)..h_k(x) of an embedding table E (M1 rows)
and a k-vector of importance weights p(x) = P[h_0(x)] from an importance table P (M2 rows, k wide);
its embedding is sum_i p_i(x) * E[h_i(x)], summed (or averaged) over the bag. The importance
weights are learned, so the model can tell colliding values apart by their weights.

- non-multiplexed (`multiplexed=False`): one (E, P) pair per feature, E as wide as the feature
  (k_lookups * d), sizes per feature (`rows`, `importance_rows`) or split by vocabulary share.
- multiplexed: ONE E of `num_rows` x d and ONE P shared by all features; a feature of width k*d
  does k independent hash-embedding lookups with its own seeds (per seed group) and concatenates.

Both tables are TorchRec tables: E is read with a weighted EBC (per-sample weights = p), P with
unpooled per-value lookups, so gradients reach E, P and through the weights. TorchRec's sharding
(fbgemm TBE) needs table widths divisible by 4, so the M2 x k importance table is stored packed,
row-major, in `importance_dim(k)`-wide rows (`importance_storage_rows`): weight j of importance row
r is element r*k + j of the flattened storage. Its parameters are M2 * k plus the padding of the
last stored row, not M2 * 4 (for k = 2) as a table padded to 4 columns would hold.
"""

from __future__ import annotations

from typing import Any

import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from embedding.hashing import UniversalHash
from embedding.methods._ops import allocate, jagged, lookup_per_value, mean_pool_fix, seeded_hash, table
from embedding.methods.base import EmbeddingMethod, register
from embedding.schema import FeatureSchema


def importance_dim(num_hashes: int) -> int:
    """Width of the stored importance rows: num_hashes rounded up to fbgemm's multiple of 4."""
    return -(-num_hashes // 4) * 4


def importance_storage_rows(rows: int, num_hashes: int) -> int:
    """Stored rows holding `rows` logical importance rows of `num_hashes` weights, packed."""
    return -(-rows * num_hashes // importance_dim(num_hashes))


def importance_parameters(rows: int, num_hashes: int) -> int:
    """Parameters of a packed importance table of `rows` x `num_hashes` weights."""
    return importance_storage_rows(rows, num_hashes) * importance_dim(num_hashes)


@register
class HashEmbedding(EmbeddingMethod):
    method = "hash_embedding"

    def __init__(
        self,
        schema: FeatureSchema,
        num_rows: int | None = None,
        importance_rows: int | dict[str, int] = 1024,
        rows: dict[str, int] | None = None,
        num_hashes: int = 2,
        multiplexed: bool = False,
        seed: int = 0,
        init_std: float = 0.01,
        importance_std: float = 0.1,
        device: str = "cpu",
    ) -> None:
        super().__init__(schema)
        if num_hashes < 1:
            raise ValueError(f"num_hashes must be >= 1, got {num_hashes}")
        self.num_hashes = num_hashes
        width_p = importance_dim(num_hashes)
        self.multiplexed = multiplexed
        self.seed = seed
        self.init_std = init_std
        self.importance_std = importance_std
        d = schema.embedding_dim
        if multiplexed:
            if num_rows is None or rows is not None or not isinstance(importance_rows, int):
                raise ValueError(
                    "multiplexed hash embedding takes num_rows (int) and importance_rows (int), not per-feature rows; "
                    f"got num_rows={num_rows} rows={rows} importance_rows={importance_rows}"
                )
            self.num_rows: int | dict[str, int] = int(num_rows)
            self.importance_rows: int | dict[str, int] = int(importance_rows)
            self._keys = [(s.name, j) for s in schema.sparse for j in range(s.lookups)]
            self._widths = [d] * len(self._keys)
            key_names = [self._key_name(k) for k in self._keys]
            tables = [table("multihash", int(num_rows), d, key_names, init_std)]
            imp_tables = [
                table(
                    "multihash_importance",
                    importance_storage_rows(int(importance_rows), num_hashes),
                    width_p,
                    [f"{k}:imp" for k in key_names],
                    importance_std,
                    mean=1.0,
                )
            ]
        else:
            if (rows is None) == (num_rows is None):
                raise ValueError(f"give exactly one of rows or num_rows; got rows={rows} num_rows={num_rows}")
            per_rows = dict(rows) if rows is not None else allocate(int(num_rows or 0), schema)
            per_imp = importance_rows if isinstance(importance_rows, dict) else allocate(importance_rows, schema)
            self.num_rows = {n: int(per_rows[n]) for n in schema.sparse_names}
            self.importance_rows = {n: int(per_imp[n]) for n in schema.sparse_names}
            self._keys = [(s.name, 0) for s in schema.sparse]
            self._widths = [schema.width(s.name) for s in schema.sparse]
            tables = [
                table(f"multihash_{n}", self.num_rows[n], w, [self._key_name((n, 0))], init_std)
                for (n, _), w in zip(self._keys, self._widths, strict=True)
            ]
            imp_tables = [
                table(
                    f"multihash_importance_{n}",
                    importance_storage_rows(self.importance_rows[n], num_hashes),
                    width_p,
                    [f"{self._key_name((n, 0))}:imp"],
                    importance_std,
                    mean=1.0,
                )
                for n, _ in self._keys
            ]
        self.ebc = EmbeddingBagCollection(tables=tables, is_weighted=True, device=torch.device(device))
        self.importance = EmbeddingBagCollection(tables=imp_tables, device=torch.device(device))
        self._hashes = [self.hashes_for(*k) for k in self._keys]

    @staticmethod
    def _key_name(key: tuple[str, int]) -> str:
        return f"{key[0]}@{key[1]}"

    def hashes_for(self, feature: str, lookup: int) -> tuple[UniversalHash, list[UniversalHash]]:
        """(importance hash h_0, row hashes h_1..h_k) of one (feature, lookup)."""
        if isinstance(self.num_rows, int):
            assert isinstance(self.importance_rows, int)
            tag, m1, m2 = self.schema.feature(feature).group, self.num_rows, self.importance_rows
        else:
            assert isinstance(self.importance_rows, dict)
            tag, m1, m2 = feature, self.num_rows[feature], self.importance_rows[feature]
        rows = [seeded_hash(self.method, self.seed, m1, tag, lookup, i) for i in range(1, self.num_hashes + 1)]
        return seeded_hash(self.method, self.seed, m2, tag, lookup, 0), rows

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "importance_rows": self.importance_rows,
            "num_hashes": self.num_hashes,
            "multiplexed": self.multiplexed,
            "seed": self.seed,
            "init_std": self.init_std,
            "importance_std": self.importance_std,
        }
        out["num_rows" if self.multiplexed else "rows"] = self.num_rows
        return out

    def importance_weights(self, keys: list[str], rows: list[torch.Tensor]) -> list[torch.Tensor]:
        """[n, k] importance weights of logical importance rows, read from the packed storage."""
        k, width = self.num_hashes, importance_dim(self.num_hashes)
        flat = [(r.unsqueeze(1) * k + torch.arange(k, device=r.device)).reshape(-1) for r in rows]  # [n*k]
        stored = lookup_per_value(self.importance, keys, [torch.div(f, width, rounding_mode="floor") for f in flat])
        return [s.gather(1, (f % width).unsqueeze(1)).view(-1, k) for s, f in zip(stored, flat, strict=True)]

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        bags = jagged(features, self.schema)
        key_names = [self._key_name(k) for k in self._keys]
        imp_idx, rows, lengths = [], [], []
        for (name, _), (h0, hs) in zip(self._keys, self._hashes, strict=True):
            values = bags[name].values()
            imp_idx.append(h0(values))
            rows.append(torch.stack([h(values) for h in hs], dim=1).reshape(-1))  # value-major, k per value
            lengths.append(bags[name].lengths() * self.num_hashes)
        weights = self.importance_weights([f"{k}:imp" for k in key_names], imp_idx)
        kjt = KeyedJaggedTensor(
            keys=key_names,
            values=torch.cat(rows),
            lengths=torch.cat(lengths),
            weights=torch.cat([w.reshape(-1) for w in weights]),
        )
        pooled = self.ebc(kjt).to_dict()
        chunks = [pooled[k] for k in key_names]
        per_feature, i = [], 0
        for spec in self.schema.sparse:
            n = spec.lookups if self.multiplexed else 1
            per_feature.append(torch.cat(chunks[i : i + n], dim=1) if n > 1 else chunks[i])
            i += n
        return self.output(mean_pool_fix(self.schema, bags, per_feature))
