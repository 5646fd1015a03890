"""Compositional embeddings from complementary partitions (Shi et al., "the QR trick").

A value x of a feature becomes a category c(x) in [0, S), S = m_1 * ... * m_k, then k small tables
are indexed by k complementary partitions of [0, S), so no two categories share all k components
(Shi et al., Def. 1 and App. B):

- `qr` (generalised quotient-remainder): p_i(c) = floor(c / (m_1 * ... * m_{i-1})) mod m_i
- `crt` (Chinese remainder): p_i(c) = c mod m_i, with pairwise coprime m_i

How c(x) is found decides whether embeddings are unique:

- known vocabulary (`vocab_sizes[f] = n`, buffer filled by `set_vocabulary`/`from_vocabulary`):
  c is the value's position in the sorted vocabulary, the paper's enumeration epsilon. With
  n <= S every known value gets its own tuple of component rows, hence (Thm 1, concat; and in
  practice for add/mult/path) its own embedding. With n > S uniqueness is impossible; the
  enumeration wraps (c = position mod S), so at most ceil(n / S) values share a tuple. A value
  outside the vocabulary is hashed into the categories the vocabulary leaves free, [n, S)
  (into all of [0, S) when n >= S).
- open vocabulary (no `vocab_sizes` entry): c is a 2-universal hash of the fingerprint onto
  [0, S), the "hash first, then partition" use the paper mentions for online indexing. Two values
  then share all k components with probability about 1/S, like a hashing trick with S rows (943
  values into S = 961 give about 600 distinct embeddings, not 943).

The k component vectors are combined by `concat` (each table holds 1/k of the width; the
unified-embedding paper's "PQ"), `add`, `mult` (element-wise product; the paper's "QR"), or `path`
(k = 2, Sec. 4.1): the second partition selects a function applied to the first partition's
vector, an affine map z A + b (`path_hidden=0`) or a one-hidden-layer ReLU MLP of width
`path_hidden`, its parameters one row of the second table.

A feature with a single modulus [n] has one table of n rows: the trivial complementary partition,
a full table. Shi et al.'s threshold (compress only tables above a size threshold, Sec. 5.4) is
expressed that way: `embedding.budget`'s `qr_threshold` gives features with at most `threshold`
values moduli [n] and compresses the others.

- non-multiplexed: tables per feature, as wide as the feature (k_lookups * d).
- multiplexed: the k component tables are shared by all features (d wide); each feature lookup
  hashes into [0, S) with its own seed (per seed group), and a feature of width k*d concatenates k.
  There is no vocabulary here: the one [0, S) is shared by every feature, as in the paper's
  multiplexed baseline.

Component rows are read with unpooled per-value lookups from TorchRec tables, combined, then pooled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
    if operation == "path" and len(moduli) > 2:
        raise ValueError(f"operation 'path' takes 2 moduli (or 1: a full table), got {list(moduli)}")


def coprime_moduli(target: int, k: int) -> list[int]:
    """k pairwise coprime moduli, each at least `target` and as small as possible (greedy)."""
    out: list[int] = []
    m = max(1, target)
    while len(out) < k:
        if all(math.gcd(m, o) == 1 for o in out):
            out.append(m)
        m += 1
    return out


def path_width(width: int, hidden: int) -> int:
    """Parameters of one path function on vectors of `width`: A (w x w) and b (w) for the affine map,
    A1 (w x h), b1 (h), A2 (h x w), b2 (w) for the MLP with `hidden` = h > 0."""
    return width * width + width if hidden == 0 else 2 * width * hidden + hidden + width


def component_widths(width: int, k: int, operation: str, path_hidden: int = 0) -> list[int]:
    """Widths of the k component tables. Concat splits the width in multiples of 4 where it can,
    since fbgemm's TBE (TorchRec sharding) needs table widths divisible by 4."""
    if operation == "concat":
        if width < k:
            raise ValueError(f"concat needs width >= number of parts; got width={width} parts={k}")
        unit = 4 if width % 4 == 0 and width >= 4 * k else 1
        return [len(part) * unit for part in np.array_split(np.arange(width // unit), k)]
    if operation == "path" and k == 2:
        return [width, path_width(width, path_hidden)]
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
        vocab_sizes: Mapping[str, int] | None = None,
        path_hidden: int = 0,
        seed: int = 0,
        init_std: float = 0.01,
        device: str = "cpu",
    ) -> None:
        super().__init__(schema)
        if operation not in ("concat", "add", "mult", "path"):
            raise ValueError(f"operation must be concat, add, mult or path; got {operation!r}")
        if path_hidden < 0 or (path_hidden and operation != "path"):
            raise ValueError(f"path_hidden must be >= 0 and only set for operation 'path'; got {path_hidden}")
        names = schema.sparse_names
        self.partition, self.operation, self.multiplexed = partition, operation, multiplexed
        self.path_hidden, self.seed, self.init_std = path_hidden, seed, init_std
        d = schema.embedding_dim
        if multiplexed:
            if isinstance(moduli, Mapping) or vocab_sizes:
                raise ValueError("multiplexed compositional takes one list of moduli and no vocabulary")
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
        self.vocab_sizes = {n: int(c) for n, c in (vocab_sizes or {}).items() if int(c) > 0}
        unknown = sorted(set(self.vocab_sizes) - set(names))
        if unknown:
            raise ValueError(f"vocab_sizes names features not in the schema: {unknown}")
        for i, name in enumerate(names):
            if name in self.vocab_sizes:  # placeholder until set_vocabulary/load_state_dict fill it
                self.register_buffer(f"vocab_{i}", torch.zeros(self.vocab_sizes[name], dtype=torch.int64))
        tables: list[EmbeddingBagConfig] = []
        if multiplexed:
            mods = self.moduli[names[0]]
            widths = component_widths(d, len(mods), operation, path_hidden)
            for i, (m, w) in enumerate(zip(mods, widths, strict=True)):
                feats = [f"{self._key(key)}#{i}" for key in self._keys]
                tables.append(self._component_table(f"compositional_{i}", m, w, d, feats, i, len(mods)))
        else:
            for name in names:
                mods, width = self.moduli[name], schema.width(name)
                widths = component_widths(width, len(mods), operation, path_hidden)
                for i, (m, w) in enumerate(zip(mods, widths, strict=True)):
                    key = f"{self._key((name, 0))}#{i}"
                    tables.append(self._component_table(f"compositional_{name}_{i}", m, w, width, [key], i, len(mods)))
        self.ebc = EmbeddingBagCollection(tables=tables, device=torch.device(device))
        self._hashes = [self.hash_for(*key) for key in self._keys]
        self._oov = {n: self._oov_hash(n) for n in self.vocab_sizes}

    def _component_table(
        self, name: str, rows: int, width: int, vec_width: int, feats: list[str], i: int, k: int
    ) -> EmbeddingBagConfig:
        if self.operation == "path" and i == 1:
            init = _path_init(vec_width, self.path_hidden, self.init_std)
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

    def num_categories(self, feature: str) -> int:
        """S = prod(m_i): the categories the complementary partitions of `feature` tell apart."""
        return math.prod(self.moduli[feature])

    def hash_for(self, feature: str, lookup: int) -> UniversalHash:
        """Fingerprint -> category in [0, S) of one (feature, lookup) (open vocabulary)."""
        tag = self.schema.feature(feature).group if self.multiplexed else feature
        return seeded_hash(self.method, self.seed, self.num_categories(feature), tag, lookup)

    def _oov_hash(self, feature: str) -> UniversalHash:
        free = self.num_categories(feature) - self.vocab_sizes[feature]
        return seeded_hash(self.method, self.seed, free if free > 0 else self.num_categories(feature), feature, "oov")

    def vocabulary(self, feature: str) -> torch.Tensor:
        """The sorted fingerprints of a feature's known vocabulary (the enumeration's domain)."""
        if feature not in self.vocab_sizes:
            raise KeyError(f"feature {feature!r} has no vocabulary; configured for {sorted(self.vocab_sizes)}")
        return getattr(self, f"vocab_{self.schema.sparse_names.index(feature)}")

    def set_vocabulary(self, values: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        """Fill the vocabulary buffers (fingerprints; each exactly `vocab_sizes[f]` distinct values)."""
        for name, vals in values.items():
            uniq = torch.unique(torch.as_tensor(np.asarray(vals), dtype=torch.int64))  # sorted
            if uniq.numel() != self.vocab_sizes.get(name, 0):
                raise ValueError(
                    f"feature {name!r}: got {uniq.numel()} distinct values, configured for "
                    f"{self.vocab_sizes.get(name, 0)} (vocab_sizes={self.vocab_sizes})"
                )
            self.vocabulary(name).copy_(uniq)

    @classmethod
    def from_vocabulary(
        cls, schema: FeatureSchema, vocabularies: Mapping[str, np.ndarray | torch.Tensor], **kwargs: Any
    ) -> CompositionalEmbedding:
        """Build with the given fingerprints (any order, duplicates allowed) as known vocabularies."""
        uniq = {n: torch.unique(torch.as_tensor(np.asarray(v), dtype=torch.int64)) for n, v in vocabularies.items()}
        module = cls(schema, vocab_sizes={n: int(u.numel()) for n, u in uniq.items()}, **kwargs)
        module.set_vocabulary({n: u for n, u in uniq.items() if u.numel()})
        return module

    def categories(self, feature: str, lookup: int, values: torch.Tensor) -> torch.Tensor:
        """Category in [0, S) of each fingerprint: its enumeration when the vocabulary is known (values
        outside it hashed into the free categories), else its hash (see the module doc)."""
        hashed = self._hashes[self._keys.index((feature, lookup))](values)
        if feature not in self.vocab_sizes:
            return hashed
        vocab, n, size = self.vocabulary(feature), self.vocab_sizes[feature], self.num_categories(feature)
        pos = torch.searchsorted(vocab, values).clamp(max=n - 1)
        oov = self._oov[feature](values) + (n if n < size else 0)
        return torch.where(vocab[pos] == values, pos % size, oov)

    def config(self) -> dict[str, Any]:
        moduli: Any = self.moduli[self.schema.sparse_names[0]] if self.multiplexed else dict(self.moduli)
        out: dict[str, Any] = {
            "moduli": moduli,
            "partition": self.partition,
            "operation": self.operation,
            "multiplexed": self.multiplexed,
            "vocab_sizes": dict(self.vocab_sizes),
            "seed": self.seed,
            "init_std": self.init_std,
        }
        if self.operation == "path":
            out["path_hidden"] = self.path_hidden
        return out

    def _combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        if len(parts) == 1:  # a full table
            return parts[0]
        if self.operation == "concat":
            return torch.cat(parts, dim=1)
        if self.operation == "add":
            return torch.stack(parts).sum(0)
        if self.operation == "mult":
            out = parts[0]
            for p in parts[1:]:
                out = out * p
            return out
        return apply_path(*parts, self.path_hidden)

    def embed_categories(self, categories: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-value vectors [n_key, width] for categories in [0, S), one tensor per (feature, lookup) key."""
        keys, idx = [], []
        for key, cats in zip(self._keys, categories, strict=True):
            for i, comp in enumerate(partition_indices(cats, self.moduli[key[0]], self.partition)):
                keys.append(f"{self._key(key)}#{i}")
                idx.append(comp)
        rows = dict(zip(keys, lookup_per_value(self.ebc, keys, idx), strict=True))
        return [
            self._combine([rows[f"{self._key(key)}#{i}"] for i in range(len(self.moduli[key[0]]))])
            for key in self._keys
        ]

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        bags = jagged(features, self.schema)
        cats = [self.categories(name, j, bags[name].values()) for name, j in self._keys]
        vectors = self.embed_categories(cats)
        pooled = [pool(v, bags[name].lengths()) for (name, _), v in zip(self._keys, vectors, strict=True)]
        per_feature, i = [], 0
        for spec in self.schema.sparse:
            n = spec.lookups if self.multiplexed else 1
            per_feature.append(torch.cat(pooled[i : i + n], dim=1) if n > 1 else pooled[i])
            i += n
        return self.output(mean_pool_fix(self.schema, bags, per_feature))


def apply_path(vec: torch.Tensor, params: torch.Tensor, hidden: int) -> torch.Tensor:
    """Each vector [n, w] through its own path function, whose parameters are a row of `params`
    (layout of `path_width`): z A + b, or relu(z A1 + b1) A2 + b2."""
    w = vec.shape[1]
    if hidden == 0:
        maps, bias = params[:, : w * w].view(-1, w, w), params[:, w * w :]
        return torch.bmm(vec.unsqueeze(1), maps).squeeze(1) + bias
    a1_end, b1_end, a2_end = w * hidden, w * hidden + hidden, 2 * w * hidden + hidden
    a1, b1 = params[:, :a1_end].view(-1, w, hidden), params[:, a1_end:b1_end]
    a2, b2 = params[:, b1_end:a2_end].view(-1, hidden, w), params[:, a2_end:]
    mid = torch.relu(torch.bmm(vec.unsqueeze(1), a1).squeeze(1) + b1)
    return torch.bmm(mid.unsqueeze(1), a2).squeeze(1) + b2


def _path_init(width: int, hidden: int, std: float) -> Any:
    """Initial path functions: near-identity affine maps with zero bias; for the MLP, He-normal
    layers (variance-preserving through the ReLU) with zero biases."""

    def init(w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            w.zero_()
            if hidden == 0:
                maps = w[:, : width * width]
                maps.normal_(0.0, std)
                maps += torch.eye(width, dtype=w.dtype).reshape(1, -1)
            else:
                a1_end, b1_end = width * hidden, width * hidden + hidden
                w[:, :a1_end].normal_(0.0, math.sqrt(2.0 / width))
                w[:, b1_end : b1_end + hidden * width].normal_(0.0, math.sqrt(2.0 / hidden))
        return w

    return init
