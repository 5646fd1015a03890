"""ROBE-Z (Desai et al., "Random Offset Block Embedding array"), with HashedNet/ROBE-1 (Z = 1) and
ROBE-D (Z = the feature's width) as special cases.

All embeddings are read out of a circular parameter array M. A feature's embedding of width D is
split into chunks of Z elements; chunk c of value x of table e starts at

    h(e, x, c) = ((A*e + B*x + C*c + D0) mod P) mod |M|,   P = 2^61 - 1,

and element i = c*Z + o is M[(h(e, x, c) + o) mod |M|] (wrap-around at the end of the array),
multiplied by the optional sign g(e, x, i) = 2*(((A'*e + B'*x + C'*i + D') mod P) mod 2) - 1.
The gather is one vectorised index op, so autograd sums the (signed) gradients of every element
that reads M[j] back into M[j], as the paper's backward pass does.

- multiplexed (the ROBE paper's own layout): one array for all features; e is the feature's seed
  group index (features of one group share embeddings).
- non-multiplexed (the unified-embedding paper's baseline): each feature owns a segment of the
  array sized by its vocabulary share (`sizes`), and wraps around inside its segment.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from embedding.hashing import (
    MERSENNE_61,
    derive_seed,
    mod_mersenne61,
    mod_mersenne61_u64,
    mul_mod_mersenne61,
    splitmix64,
)
from embedding.methods._ops import allocate, jagged, mean_pool_fix, pool
from embedding.methods.base import EmbeddingMethod, register
from embedding.schema import FeatureSchema

_M64 = (1 << 64) - 1


def hash_coefficients(seed: int) -> tuple[int, int, int, int]:
    """(A, B, C, D): A, B, C in [1, P), D in [0, P), drawn from `seed`."""
    draws = splitmix64(np.array([(seed + i) & _M64 for i in range(4)], dtype=np.uint64)).tolist()
    a, b, c = (1 + v % (MERSENNE_61 - 1) for v in draws[:3])
    return a, b, c, draws[3] % MERSENNE_61


def _affine(x: torch.Tensor, coef: tuple[int, int, int, int], e: int, steps: int) -> torch.Tensor:
    """((A*e + B*x + C*s + D) mod P) for s in [0, steps): shape [n, steps]."""
    a, b, c, d = coef
    bx = mul_mod_mersenne61(mod_mersenne61_u64(x), b)  # [n], < P
    const = torch.tensor([(a * e + c * s + d) % MERSENNE_61 for s in range(steps)], dtype=torch.int64, device=x.device)
    return mod_mersenne61(bx.unsqueeze(1) + const.unsqueeze(0))  # both < 2^61: sum < 2^62


def robe_reference(
    x: int, e: int, width: int, block: int, size: int, coef_h: tuple[int, ...], coef_g: tuple[int, ...] | None
) -> tuple[list[int], list[int]]:
    """Slow Python-int reference: (array index, sign) of each element of value x's embedding."""
    a, b, c, d = coef_h
    idx, sign = [], []
    for i in range(width):
        chunk, offset = divmod(i, block)
        start = ((a * e + b * (x & _M64) + c * chunk + d) % MERSENNE_61) % size
        idx.append((start + offset) % size)
        if coef_g is None:
            sign.append(1)
        else:
            ga, gb, gc, gd = coef_g
            sign.append(2 * (((ga * e + gb * (x & _M64) + gc * i + gd) % MERSENNE_61) % 2) - 1)
    return idx, sign


@register
class RobeEmbedding(EmbeddingMethod):
    """`size` = |M| (multiplexed) or `sizes` per feature (non-multiplexed; or `size` split by
    vocabulary share). `block` = Z, clipped to each feature's width (block >= width is ROBE-D)."""

    method = "robe"

    def __init__(
        self,
        schema: FeatureSchema,
        size: int | None = None,
        block: int = 1,
        sizes: dict[str, int] | None = None,
        multiplexed: bool = True,
        signed: bool = True,
        seed: int = 0,
        init_std: float = 0.01,
        device: str = "cpu",
    ) -> None:
        super().__init__(schema)
        if block < 1:
            raise ValueError(f"block size Z must be >= 1, got {block}")
        self.block = block
        self.multiplexed = multiplexed
        self.signed = signed
        self.seed = seed
        self.init_std = init_std
        names = schema.sparse_names
        if multiplexed:
            if size is None or sizes is not None:
                raise ValueError(f"multiplexed ROBE takes size (int), not sizes; got size={size} sizes={sizes}")
            self.sizes = {n: int(size) for n in names}
            self._offsets = dict.fromkeys(names, 0)
            total = int(size)
        else:
            if (size is None) == (sizes is None):
                raise ValueError(f"give exactly one of size or sizes; got size={size} sizes={sizes}")
            per = dict(sizes) if sizes is not None else allocate(int(size or 0), schema)
            if sorted(per) != sorted(names):
                raise ValueError(f"sizes must name exactly {names}; got {sorted(per)}")
            self.sizes = {n: int(per[n]) for n in names}
            self._offsets, total = {}, 0
            for n in names:
                self._offsets[n] = total
                total += self.sizes[n]
        if min(self.sizes.values()) < 1:
            raise ValueError(f"every ROBE array needs >= 1 element; got sizes={self.sizes}")
        self.weight = nn.Parameter(torch.empty(total, device=torch.device(device)).normal_(0.0, init_std))
        groups = sorted({s.group for s in schema.sparse})
        self._table_ids = {s.name: (groups.index(s.group) if multiplexed else i) for i, s in enumerate(schema.sparse)}
        self._coef = {n: self.coefficients(n) for n in names}

    def coefficients(self, feature: str) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int] | None]:
        """(h coefficients, g coefficients or None) of a feature."""
        tag = self.schema.feature(feature).group if self.multiplexed else feature
        coef_g = hash_coefficients(derive_seed(self.method, self.seed, tag, "g")) if self.signed else None
        return hash_coefficients(derive_seed(self.method, self.seed, tag, "h")), coef_g

    def table_id(self, feature: str) -> int:
        return self._table_ids[feature]

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "block": self.block,
            "multiplexed": self.multiplexed,
            "signed": self.signed,
            "seed": self.seed,
            "init_std": self.init_std,
        }
        if self.multiplexed:
            out["size"] = self.weight.numel()
        else:
            out["sizes"] = dict(self.sizes)
        return out

    def indices(self, feature: str, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Array positions [n, width] (global, into `weight`) and signs [n, width] (or None)."""
        width = self.schema.width(feature)
        z = min(self.block, width)
        chunks = math.ceil(width / z)
        size, e = self.sizes[feature], self._table_ids[feature]
        coef_h, coef_g = self._coef[feature]
        start = _affine(values, coef_h, e, chunks) % size  # [n, chunks]
        offset = torch.arange(width, device=values.device) % z
        idx = (start.repeat_interleave(z, dim=1)[:, :width] + offset) % size + self._offsets[feature]
        sign = None
        if coef_g is not None:
            sign = (_affine(values, coef_g, e, width) & 1).to(self.weight.dtype) * 2 - 1
        return idx, sign

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        bags = jagged(features, self.schema)
        per_feature = []
        for spec in self.schema.sparse:
            bag = bags[spec.name]
            idx, sign = self.indices(spec.name, bag.values())
            vectors = self.weight[idx]
            if sign is not None:
                vectors = vectors * sign
            per_feature.append(pool(vectors, bag.lengths()))
        return self.output(mean_pool_fix(self.schema, bags, per_feature))
