"""Unified embedding (feature multiplexing): ONE table of M rows shared by all features.

Feature t (or its seed group) maps fingerprint x to row h_{t,j}(x) for each of its k lookups j,
with a 2-universal hash per (group, j); the k rows are concatenated, so a feature's width is k*d.
Equal tokens of different features land in different rows unless the features share a seed group.

Storage: the M logical rows may be stored as `num_blocks` contiguous row blocks, each a TorchRec
table (`block_sizes`: ceil(M/B) rows each, the last one smaller, so row r lives in block
r // ceil(M/B); where that would leave a block empty, e.g. 9 rows in 4 blocks, rows are split as
evenly as possible, 3 2 2 2, and `locate` finds them). Each lookup is routed to its
block and the pooled partial sums are added back, so the method is exactly the same for any B
(sum pooling is linear).

Layout for the kernel: each block table has ONE TorchRec feature, `lookups#{b}`, whose bags are
all (example, lookup key) pairs of the batch, example-major (stride batch x keys). fbgemm's CPU
backward is about twice as slow when many features share one table (26 features on one table vs
one feature with 26x the bags, same rows: ~2x in bench/embedding_throughput.py), so the unified
table is handed over as one feature per block. Example-major bags make the pooled
[batch x keys, blocks x d] output a free view of [batch, keys x d] once the blocks' partial sums
are added (key-major bags needed a transpose, forward and backward). Blocks give fbgemm's TBE per-table parallelism and cache locality back, and
table-wise sharding of blocks spreads the one logical table over ranks like row-wise sharding.

Hot path (CPU): `rows` hashes every lookup of a batch in one vectorised call (`HashBank`, numpy),
`route_rows` routes with numpy (a 16-bit radix sort); the trainer routes a batch once (`prepare`,
off its training thread) and hands `forward` the routed KJT, whose keys say it is already routed,
so rows are hashed once per batch. Any other caller passes fingerprints as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from embedding.hashing import HashBank, UniversalHash, derive_seed
from embedding.methods._ops import table
from embedding.methods.base import EmbeddingMethod, register
from embedding.schema import FeatureSchema


def block_sizes(num_rows: int, num_blocks: int) -> list[int]:
    """Rows of each block (see the module doc); every block holds at least one row."""
    per = math.ceil(num_rows / num_blocks)
    if per * (num_blocks - 1) < num_rows:
        return [per] * (num_blocks - 1) + [num_rows - per * (num_blocks - 1)]
    low, extra = divmod(num_rows, num_blocks)
    return [low + 1] * extra + [low] * (num_blocks - extra)


def lookup_keys(schema: FeatureSchema) -> list[tuple[str, int]]:
    """(feature, lookup index) pairs in output order."""
    return [(spec.name, j) for spec in schema.sparse for j in range(spec.lookups)]


@dataclass
class Routed:
    """One batch routed to the row blocks: what `UnifiedEmbedding.forward` consumes, and the rows."""

    kjt: KeyedJaggedTensor
    """Keys `lookups#{block}`, each with one bag per (example, lookup key), example-major; values rows
    inside their block."""
    rows: torch.Tensor
    """Logical rows of every lookup, key-major in `lookup_keys` order (int64)."""
    lengths: torch.Tensor
    """Bag lengths per (lookup key, example), matching `rows`."""


@register
class UnifiedEmbedding(EmbeddingMethod):
    method = "unified"

    def __init__(
        self,
        schema: FeatureSchema,
        num_rows: int,
        num_blocks: int = 1,
        seed: int = 0,
        init_std: float = 0.01,
        device: str = "cpu",
    ) -> None:
        super().__init__(schema)
        if num_rows < num_blocks or num_blocks < 1:
            raise ValueError(f"need 1 <= num_blocks <= num_rows, got num_blocks={num_blocks} num_rows={num_rows}")
        self.num_rows = num_rows
        self.num_blocks = num_blocks
        self.seed = seed
        self.init_std = init_std
        self.dim = schema.embedding_dim
        self.sizes = block_sizes(num_rows, num_blocks)
        self.starts = [sum(self.sizes[:b]) for b in range(num_blocks)]
        uniform = self.sizes[0] * (num_blocks - 1) < num_rows  # block b starts at b * sizes[0]
        self._block_rows = self.sizes[0] if uniform else None
        self._keys = lookup_keys(schema)
        self.hashes = [self.hash_for(name, j) for name, j in self._keys]
        # one feature per block (see the module doc), in the order of the EBC's tables: DMP's input
        # dist then needs no permute
        self._block_keys = [f"lookups#{b}" for b in range(num_blocks)]
        tables = [
            table(self.table_name(b), rows, self.dim, [self._block_keys[b]], std=init_std)
            for b, rows in enumerate(self.sizes)
        ]
        self.ebc = EmbeddingBagCollection(tables=tables, device=torch.device(device))
        self._bank = HashBank(self.hashes)
        names = self.schema.sparse_names
        self._first_lookup = [self._keys.index((name, 0)) for name in names]

    @property
    def block_rows(self) -> int:
        """Rows per block when block b holds rows [b * block_rows, (b + 1) * block_rows)."""
        if self._block_rows is None:
            raise ValueError(f"{self.num_rows} rows in {self.num_blocks} blocks are {self.sizes}; use locate()")
        return self._block_rows

    def locate(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(block, row inside the block) of logical rows."""
        if self._block_rows is not None:
            block = torch.div(rows, self._block_rows, rounding_mode="floor")
            return block, rows - block * self._block_rows
        starts = torch.tensor(self.starts, device=rows.device)
        block = torch.bucketize(rows, starts[1:], right=True)
        return block, rows - starts[block]

    @staticmethod
    def table_name(block: int) -> str:
        return f"unified_{block}"

    def hash_for(self, feature: str, lookup: int) -> UniversalHash:
        group = self.schema.feature(feature).group
        return UniversalHash.from_seed(derive_seed("unified", self.seed, group, lookup), self.num_rows)

    def config(self) -> dict[str, Any]:
        return {"num_rows": self.num_rows, "num_blocks": self.num_blocks, "seed": self.seed, "init_std": self.init_std}

    def rows(self, features: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logical rows of every lookup, key-major in `lookup_keys` order, and the matching lengths."""
        if features.values().device.type != "cpu":
            values, lengths = [], []
            for (name, _), hasher in zip(self._keys, self.hashes, strict=True):
                jagged = features[name]
                values.append(hasher(jagged.values()))
                lengths.append(jagged.lengths())
            return torch.cat(values), torch.cat(lengths)
        rows, lengths = self.rows_numpy(features)
        return torch.from_numpy(rows), torch.from_numpy(lengths)

    def rows_numpy(self, features: KeyedJaggedTensor) -> tuple[np.ndarray, np.ndarray]:
        """`rows` on CPU as numpy arrays: one hash call for every feature and lookup of the batch."""
        keys = features.keys()
        values = features.values().numpy()
        lengths = features.lengths().numpy()
        stride = features.stride()
        per_key = np.asarray(features.length_per_key(), dtype=np.int64)
        names = self.schema.sparse_names
        if keys == names and len(self._keys) == len(names):  # the featurizer's layout: no gather needed
            key_values, key_lengths, counts = values, lengths, per_key
        else:
            index = {k: i for i, k in enumerate(keys)}
            missing = [n for n in names if n not in index]
            if missing:
                raise KeyError(f"KeyedJaggedTensor lacks sparse features {missing}; it has keys {keys}")
            starts = np.concatenate([[0], np.cumsum(per_key)])
            src = [index[name] for name, _ in self._keys]
            key_values = np.concatenate([values[starts[i] : starts[i + 1]] for i in src]) if src else values[:0]
            key_lengths = lengths.reshape(len(keys), stride)[src].reshape(-1)
            counts = per_key[src]
        return self._bank(key_values, counts), np.ascontiguousarray(key_lengths, dtype=np.int64)

    def route(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """The input as the EBC consumes it: keys `lookups#{block}` (the tables' order), each with a
        bag per (example, lookup key), example-major, values rows inside their block (a lookup's
        bag is split over the blocks, its values kept in order)."""
        return self.prepare(features).kjt

    def prepare(self, features: KeyedJaggedTensor) -> Routed:
        """Hash and route a batch of fingerprints once: the routed KJT and the logical rows."""
        if features.values().device.type != "cpu":
            rows, lengths = self.rows(features)
            return Routed(self._route_torch(rows, lengths, features.stride()), rows, lengths)
        rows, lengths = self.rows_numpy(features)
        values, routed_lengths = self.route_rows(rows, lengths, features.stride())
        kjt = KeyedJaggedTensor(
            keys=self._block_keys, values=torch.from_numpy(values), lengths=torch.from_numpy(routed_lengths)
        )
        return Routed(kjt, torch.from_numpy(rows), torch.from_numpy(lengths))

    def route_rows(self, rows: np.ndarray, lengths: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """(values, lengths) of the routed KJT for logical `rows` with key-major bag `lengths`
        [keys * batch]: bags reordered example-major, then split over the blocks."""
        n_keys, n_blocks = len(self._keys), self.num_blocks
        key_major = lengths.reshape(n_keys, batch)
        if len(rows) == lengths.size and n_keys > 1:  # one value per bag: the reorder is a transpose
            rows = np.ascontiguousarray(rows.reshape(n_keys, batch).T).reshape(-1)
        elif n_keys > 1:
            starts = np.zeros(lengths.size, dtype=np.int64)
            np.cumsum(lengths[:-1], out=starts[1:])
            bag_lengths = key_major.T.reshape(-1)
            bag_starts = starts.reshape(n_keys, batch).T.reshape(-1)
            ends = np.cumsum(bag_lengths)
            source = np.arange(len(rows), dtype=np.int64) + np.repeat(bag_starts - (ends - bag_lengths), bag_lengths)
            rows = rows[source]
        lengths = np.ascontiguousarray(key_major.T).reshape(-1)
        if n_blocks == 1:
            return rows, lengths
        if self._block_rows is not None:
            block = rows // self._block_rows
            local = rows - block * self._block_rows
        else:  # uneven blocks: as `locate`
            starts = np.asarray(self.starts, dtype=np.int64)
            block = np.searchsorted(starts[1:], rows, side="right")
            local = rows - starts[block]
        bag = np.repeat(np.arange(batch * n_keys, dtype=np.int64), lengths)  # example * keys + key
        # a stable sort by block keeps bag order inside each block; 16-bit keys sort by radix
        order = np.argsort(block.astype(np.int16) if n_blocks < 2**15 else block, kind="stable")
        slot = (block * (batch * n_keys) + bag)[order]
        return local[order], np.bincount(slot, minlength=n_blocks * batch * n_keys).astype(np.int64)

    def _route_torch(self, rows: torch.Tensor, lengths: torch.Tensor, batch: int) -> KeyedJaggedTensor:
        n_keys, n_blocks = len(self._keys), self.num_blocks
        key_major = lengths.view(n_keys, batch)
        bag = torch.repeat_interleave(torch.arange(n_keys * batch, device=rows.device), lengths)  # key*batch + example
        key = torch.div(bag, batch, rounding_mode="floor")
        example_major = (bag - key * batch) * n_keys + key
        block, local = self.locate(rows)
        slot = block * (batch * n_keys) + example_major
        order = torch.argsort(slot, stable=True)
        return KeyedJaggedTensor(
            keys=self._block_keys,
            values=local[order],
            lengths=torch.bincount(slot, minlength=n_blocks * batch * n_keys) if n_blocks > 1 else key_major.T.reshape(-1),
        )

    def is_routed(self, features: KeyedJaggedTensor) -> bool:
        """Whether `features` is already the routed input (`prepare(...).kjt`), not fingerprints."""
        return features.keys() == self._block_keys

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """Pooled embeddings per feature, from fingerprints or from an already routed batch."""
        n_keys, n_blocks = len(self._keys), self.num_blocks
        if self.is_routed(features):
            routed = features
            divisors = self._routed_divisors(features)
        else:
            routed = self.route(features)
            divisors = self.mean_divisors(features)
        batch = routed.stride() // n_keys
        pooled = self.ebc(routed).values()  # [batch * keys, blocks * d]: bags example-major, blocks side by side
        if n_blocks > 1:
            pooled = pooled.view(batch * n_keys, n_blocks, self.dim).sum(dim=1)
        pooled = pooled.view(batch, n_keys * self.dim)
        per_feature = list(torch.split(pooled, [self.schema.width(s.name) for s in self.schema.sparse], dim=1))
        for i, spec in enumerate(self.schema.sparse):
            if spec.name in divisors:
                per_feature[i] = per_feature[i] / divisors[spec.name]
        return self.output(per_feature)

    def _routed_divisors(self, routed: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
        """`mean_divisors` from a routed batch: a feature's bag length is its first lookup's, summed over blocks."""
        means = [i for i, spec in enumerate(self.schema.sparse) if spec.pooling == "mean"]
        if not means:
            return {}
        per_key = routed.lengths().view(self.num_blocks, -1, len(self._keys)).sum(dim=0)  # [batch, keys]
        return {
            self.schema.sparse[i].name: per_key[:, self._first_lookup[i]].clamp(min=1).to(torch.float32).unsqueeze(1)
            for i in means
        }
