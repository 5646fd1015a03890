"""Vectorised building blocks shared by the methods: per-feature hashing, bag pooling, per-value
lookups through a TorchRec EmbeddingBagCollection, and budget allocation by vocabulary share."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from embedding.hashing import UniversalHash, derive_seed
from embedding.schema import FeatureSchema


def seeded_hash(method: str, seed: int, m: int, *parts: str | int) -> UniversalHash:
    """A 2-universal hash onto [0, m) whose (a, b) derive from the method, its seed and `parts`."""
    return UniversalHash.from_seed(derive_seed(method, seed, *parts), m)


def jagged(features: KeyedJaggedTensor, schema: FeatureSchema) -> dict[str, JaggedTensor]:
    """The bags of every sparse feature of `schema` (a key absent from `features` is an error)."""
    per_key = features.to_dict()
    missing = [n for n in schema.sparse_names if n not in per_key]
    if missing:
        raise KeyError(f"KeyedJaggedTensor lacks sparse features {missing}; it has keys {features.keys()}")
    return {name: per_key[name] for name in schema.sparse_names}


def bag_index(lengths: torch.Tensor) -> torch.Tensor:
    """For each value, the example (bag) it belongs to."""
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)


def pool(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Sum-pool per-value vectors [n, w] into bags [batch, w] (empty bags give zeros)."""
    out = values.new_zeros((lengths.numel(), values.shape[1]))
    return out.index_add(0, bag_index(lengths), values)


def table(name: str, rows: int, dim: int, features: list[str], std: float, mean: float = 0.0) -> EmbeddingBagConfig:
    """A sum-pooled TorchRec table with normal(mean, std) initialisation."""
    if rows < 1 or dim < 1:
        raise ValueError(f"table {name!r} needs rows >= 1 and dim >= 1, got rows={rows} dim={dim}")
    return EmbeddingBagConfig(
        name=name,
        num_embeddings=rows,
        embedding_dim=dim,
        feature_names=features,
        pooling=PoolingType.SUM,
        init_fn=lambda w, mu=mean, s=std: torch.nn.init.normal_(w, mu, s),
    )


def lookup_per_value(
    ebc: EmbeddingBagCollection, keys: Sequence[str], indices: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Unpooled lookups through a pooled EBC: every value is its own bag of length 1.

    All keys of a KJT share one stride, so the stride is the longest key's value count and
    shorter keys get empty (zero) bags at the end, which are cut off again. `keys` must name all
    features of `ebc`; returns [n_k, dim_k] per key, in `keys` order.
    """
    counts = [int(i.numel()) for i in indices]
    stride = max(counts) if counts else 0
    device = indices[0].device if indices else torch.device("cpu")
    if stride == 0:
        dims = _feature_dims(ebc)
        return [torch.zeros((0, dims[k]), device=device) for k in keys]
    lengths = torch.zeros((len(keys), stride), dtype=torch.int64, device=device)
    for k, n in enumerate(counts):
        lengths[k, :n] = 1
    kjt = KeyedJaggedTensor(keys=list(keys), values=torch.cat(list(indices)), lengths=lengths.view(-1))
    pooled = ebc(kjt).to_dict()
    return [pooled[k][:n] for k, n in zip(keys, counts, strict=True)]


def _feature_dims(ebc: EmbeddingBagCollection) -> dict[str, int]:
    return {f: cfg.embedding_dim for cfg in ebc.embedding_bag_configs() for f in cfg.feature_names}


def vocab_shares(schema: FeatureSchema) -> dict[str, float]:
    """Each feature's share of the total vocabulary (features without vocab_size get the mean)."""
    known = [f.vocab_size for f in schema.sparse if f.vocab_size]
    fill = sum(known) / len(known) if known else 1.0
    sizes = {f.name: float(f.vocab_size or fill) for f in schema.sparse}
    total = sum(sizes.values())
    return {name: size / total for name, size in sizes.items()}


def allocate(total: int, schema: FeatureSchema, minimum: int = 1) -> dict[str, int]:
    """Split `total` units over features by vocabulary share (largest remainder), each >= minimum."""
    shares = vocab_shares(schema)
    raw = {n: max(float(minimum), total * s) for n, s in shares.items()}
    out = {n: max(minimum, math.floor(v)) for n, v in raw.items()}
    left = total - sum(out.values())
    for name in sorted(raw, key=lambda n: raw[n] - math.floor(raw[n]), reverse=True):
        if left <= 0:
            break
        out[name] += 1
        left -= 1
    return out


def mean_pool_fix(
    schema: FeatureSchema, bags: dict[str, JaggedTensor], pooled: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Divide sum-pooled outputs of mean-pooled features by their bag lengths (at least 1)."""
    out = list(pooled)
    for i, spec in enumerate(schema.sparse):
        if spec.pooling == "mean":
            out[i] = out[i] / bags[spec.name].lengths().clamp(min=1).to(out[i].dtype).unsqueeze(1)
    return out
