"""Compositional embeddings from complementary partitions (Shi et al., "the QR trick").

A value is first hashed to a category c in [0, S) with S = m_1 * ... * m_k (a 2-universal hash per
feature; exact when the vocabulary fits, like a hashing trick with S rows otherwise). Then k small
tables are indexed by k complementary partitions of [0, S), so no two categories share all k
components:

- `qr` (generalised quotient-remainder): p_i(c) = floor(c / (m_1 * ... * m_{i-1})) mod m_i
- `crt` (Chinese remainder): p_i(c) = c mod m_i, with pairwise coprime m_i

and the k component vectors are combined by `concat` (each table holds 1/k of the width; the
unified-embedding paper's "PQ"), `add`, `mult` (element-wise product; the paper's "QR"), or `path`
(k = 2: the second partition selects a W x W linear map applied to the first partition's vector).
Optionally the `frequent` values of a feature keep a full row of their own (Shi et al.'s threshold).

- non-multiplexed: tables per feature, as wide as the feature (k_lookups * d).
- multiplexed: the k component tables are shared by all features (d wide); each feature lookup
  hashes into [0, S) with its own seed (per seed group), and a feature of width k*d concatenates k.

Component rows are read with unpooled per-value lookups from TorchRec tables, combined, then pooled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from embedding.hashing import UniversalHash
from embedding.methods._ops import jagged, lookup_per_value, mean_pool_fix, pool, seeded_hash, table
from embedding.methods.base import EmbeddingMethod, register
from embedding.schema import FeatureSchema

Partition = Literal["qr", "crt"]
Operation = Literal["concat", "add", "mult", "path"]


def partition_indices(categories: torch.Tensor, moduli: Sequence[int], partition: str) -> list[torch.Tensor]:
    """The component index of each category in each of the k partitions (see the module doc)."""
    if partition == "crt":
        return [categories % m for m in moduli]
    if partition == "qr":
        out, stride = [], 1
        for m in moduli:
            out.append(torch.div(categories, stride, rounding_mode="floor") % m)
            stride *= m
        return out
    raise ValueError(f"partition must be 'qr' or 'crt', got {partition!r}")


def check_moduli(moduli: Sequence[int], partition: str, operation: str) -> None:
    if not moduli or any(int(m) < 1 for m in moduli):
        raise ValueError(f"moduli must be a non-empty list of positive ints, got {list(moduli)}")
    if partition == "crt":
        for i, a in enumerate(moduli):
            for b in moduli[i + 1 :]:
                if math.gcd(int(a), int(b)) != 1:
                    raise ValueError(f"crt moduli must be pairwise coprime; {a} and {b} share {math.gcd(a, b)}")
    if operation == "path" and len(moduli) != 2:
        raise ValueError(f"operation 'path' takes exactly 2 moduli, got {list(moduli)}")


def coprime_moduli(target: int, k: int) -> list[int]:
    """k pairwise coprime moduli, each at least `target` and as small as possible (greedy)."""
    out: list[int] = []
    m = max(1, target)
    while len(out) < k:
        if all(math.gcd(m, o) == 1 for o in out):
            out.append(m)
        m += 1
    return out


def component_widths(width: int, k: int, operation: str) -> list[int]:
    """Widths of the k component tables. Concat splits the width in multiples of 4 where it can,
    since fbgemm's TBE (TorchRec sharding) needs table widths divisible by 4."""
    if operation == "concat":
        if width < k:
            raise ValueError(f"concat needs width >= number of parts; got width={width} parts={k}")
        unit = 4 if width % 4 == 0 and width >= 4 * k else 1
        return [len(part) * unit for part in np.array_split(np.arange(width // unit), k)]
    if operation == "path":
        return [width, width * width]
    return [width] * k


@register
class CompositionalEmbedding(EmbeddingMethod):
    method = "compositional"

    def __init__(
        self,
        schema: FeatureSchema,
        moduli: Sequence[int] | Mapping[str, Sequence[int]],
        partition: Partition = "qr",
        operation: Operation = "mult",
        multiplexed: bool = False,
        frequent: Mapping[str, int] | None = None,
        seed: int = 0,
        init_std: float = 0.01,
        device: str = "cpu",
    ) -> None:
        super().__init__(schema)
        if operation not in ("concat", "add", "mult", "path"):
            raise ValueError(f"operation must be concat, add, mult or path; got {operation!r}")
        names = schema.sparse_names
        self.partition, self.operation, self.multiplexed = partition, operation, multiplexed
        self.seed, self.init_std = seed, init_std
        d = schema.embedding_dim
        if multiplexed:
            if isinstance(moduli, Mapping) or frequent:
                raise ValueError("multiplexed compositional takes one list of moduli and no frequent rows")
            self.moduli: dict[str, list[int]] = {n: [int(m) for m in moduli] for n in names}
            self._keys = [(s.name, j) for s in schema.sparse for j in range(s.lookups)]
        else:
            if not isinstance(moduli, Mapping):
                moduli = dict.fromkeys(names, moduli)
            if sorted(moduli) != sorted(names):
                raise ValueError(f"moduli must name exactly {names}; got {sorted(moduli)}")
            self.moduli = {n: [int(m) for m in moduli[n]] for n in names}
            self._keys = [(n, 0) for n in names]
        for mods in self.moduli.values():
            check_moduli(mods, partition, operation)
        self.frequent = {n: int(c) for n, c in (frequent or {}).items() if int(c) > 0}
        unknown = sorted(set(self.frequent) - set(names))
        if unknown:
            raise ValueError(f"frequent names features not in the schema: {unknown}")
        # component std: a product of k factors of std s**(1/k) has std about s
        k_parts = {n: len(m) for n, m in self.moduli.items()}
        tables: list[EmbeddingBagConfig] = []
        if multiplexed:
            mods = self.moduli[names[0]]
            for i, (m, w) in enumerate(zip(mods, component_widths(d, len(mods), operation), strict=True)):
                feats = [f"{self._key(key)}#{i}" for key in self._keys]
                tables.append(self._component_table(f"compositional_{i}", m, w, feats, i, len(mods)))
        else:
            for name in names:
                mods, width = self.moduli[name], schema.width(name)
                for i, (m, w) in enumerate(zip(mods, component_widths(width, len(mods), operation), strict=True)):
                    key = f"{self._key((name, 0))}#{i}"
                    tables.append(self._component_table(f"compositional_{name}_{i}", m, w, [key], i, k_parts[name]))
        for i, name in enumerate(names):
            if name in self.frequent:
                self.register_buffer(f"frequent_{i}", torch.zeros(self.frequent[name], dtype=torch.int64))
                tables.append(
                    table(
                        f"compositional_{name}_full",
                        self.frequent[name],
                        schema.width(name),
                        [f"{self._key((name, 0))}#full"],
                        init_std,
                    )
                )
        self.ebc = EmbeddingBagCollection(tables=tables, device=torch.device(device))
        self._hashes = [self.hash_for(*key) for key in self._keys]

    def _component_table(
        self, name: str, rows: int, width: int, feats: list[str], i: int, k: int
    ) -> EmbeddingBagConfig:
        if self.operation == "path" and i == 1:
            side = math.isqrt(width)
            std = self.init_std

            def init(w: torch.Tensor) -> torch.Tensor:  # near-identity maps
                with torch.no_grad():
                    w.normal_(0.0, std)
                    w += torch.eye(side, dtype=w.dtype).reshape(1, -1)
                return w

            return EmbeddingBagConfig(
                name=name,
                num_embeddings=rows,
                embedding_dim=width,
                feature_names=feats,
                pooling=PoolingType.SUM,
                init_fn=init,
            )
        std = self.init_std ** (1.0 / k) if self.operation == "mult" else self.init_std
        return table(name, rows, width, feats, std)

    @staticmethod
    def _key(key: tuple[str, int]) -> str:
        return f"{key[0]}@{key[1]}"

    def hash_for(self, feature: str, lookup: int) -> UniversalHash:
        """Fingerprint -> category in [0, S) of one (feature, lookup)."""
        tag = self.schema.feature(feature).group if self.multiplexed else feature
        return seeded_hash(self.method, self.seed, math.prod(self.moduli[feature]), tag, lookup)

    def frequent_values(self, feature: str) -> torch.Tensor:
        return getattr(self, f"frequent_{self.schema.sparse_names.index(feature)}")

    def set_frequent(self, values: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        """Fill the frequent-value buffers (fingerprints; each exactly `frequent[f]` distinct values)."""
        for name, vals in values.items():
            uniq = torch.unique(torch.as_tensor(np.asarray(vals), dtype=torch.int64))
            if uniq.numel() != self.frequent.get(name, 0):
                raise ValueError(
                    f"feature {name!r}: got {uniq.numel()} distinct frequent values, "
                    f"configured for {self.frequent.get(name, 0)}"
                )
            self.frequent_values(name).copy_(uniq)

    @staticmethod
    def frequent_from_counts(
        batches: Iterable[KeyedJaggedTensor], schema: FeatureSchema, threshold: int
    ) -> dict[str, torch.Tensor]:
        """Per feature, the fingerprints seen at least `threshold` times in `batches`."""
        counts: dict[str, list[torch.Tensor]] = {n: [] for n in schema.sparse_names}
        for kjt in batches:
            for name, bag in jagged(kjt, schema).items():
                counts[name].append(bag.values())
        out = {}
        for name, chunks in counts.items():
            if chunks:
                vals, cnt = torch.unique(torch.cat(chunks), return_counts=True)
                out[name] = vals[cnt >= threshold]
        return out

    def config(self) -> dict[str, Any]:
        moduli: Any = self.moduli[self.schema.sparse_names[0]] if self.multiplexed else dict(self.moduli)
        return {
            "moduli": moduli,
            "partition": self.partition,
            "operation": self.operation,
            "multiplexed": self.multiplexed,
            "frequent": dict(self.frequent),
            "seed": self.seed,
            "init_std": self.init_std,
        }

    def _combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        if self.operation == "concat":
            return torch.cat(parts, dim=1)
        if self.operation == "add":
            return torch.stack(parts).sum(0)
        if self.operation == "mult":
            out = parts[0]
            for p in parts[1:]:
                out = out * p
            return out
        vec, maps = parts  # path: [n, w] @ [n, w, w]
        w = vec.shape[1]
        return torch.bmm(vec.unsqueeze(1), maps.view(-1, w, w)).squeeze(1)

    def embed_categories(
        self, categories: Sequence[torch.Tensor], frequent_rows: Mapping[str, torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """Per-value vectors [n_key, width] for categories in [0, S), one tensor per (feature, lookup)
        key; `frequent_rows[f]` (full-table row per value, -1 for values that are not frequent)
        replaces the composed vector of frequent values."""
        keys, idx = [], []
        for key, cats in zip(self._keys, categories, strict=True):
            for i, comp in enumerate(partition_indices(cats, self.moduli[key[0]], self.partition)):
                keys.append(f"{self._key(key)}#{i}")
                idx.append(comp)
        frequent_rows = frequent_rows or {}
        for name in self.frequent:  # every table of the EBC must be in the one lookup
            keys.append(f"{self._key((name, 0))}#full")
            empty = torch.zeros(0, dtype=torch.int64, device=self.frequent_values(name).device)
            idx.append(frequent_rows[name].clamp(min=0) if name in frequent_rows else empty)
        rows = dict(zip(keys, lookup_per_value(self.ebc, keys, idx), strict=True))
        out = []
        for key in self._keys:
            k = len(self.moduli[key[0]])
            vec = self._combine([rows[f"{self._key(key)}#{i}"] for i in range(k)])
            if key[0] in frequent_rows:
                hit = (frequent_rows[key[0]] >= 0).unsqueeze(1)
                vec = torch.where(hit, rows[f"{self._key(key)}#full"], vec)
            out.append(vec)
        return out

    def frequent_rows(self, feature: str, values: torch.Tensor) -> torch.Tensor:
        """Full-table row of each fingerprint that is frequent, -1 for the others."""
        vocab = self.frequent_values(feature)
        pos = torch.searchsorted(vocab, values).clamp(max=vocab.numel() - 1)
        return torch.where(vocab[pos] == values, pos, torch.full_like(pos, -1))

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        bags = jagged(features, self.schema)
        cats = [h(bags[name].values()) for (name, _), h in zip(self._keys, self._hashes, strict=True)]
        frequent = {n: self.frequent_rows(n, bags[n].values()) for n in self.frequent}
        vectors = self.embed_categories(cats, frequent)
        pooled = [pool(v, bags[name].lengths()) for (name, _), v in zip(self._keys, vectors, strict=True)]
        per_feature, i = [], 0
        for spec in self.schema.sparse:
            n = spec.lookups if self.multiplexed else 1
            per_feature.append(torch.cat(pooled[i : i + n], dim=1) if n > 1 else pooled[i])
            i += n
        return self.output(mean_pool_fix(self.schema, bags, per_feature))
