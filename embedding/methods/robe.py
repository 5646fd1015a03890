"""ROBE-Z (Desai et al., "Random Offset Block Embedding array"), with HashedNet/ROBE-1 (Z = 1) and
ROBE-D (Z = the feature's width) as special cases, and Z > width by clubbing embeddings.

All embeddings are read out of a circular parameter array M. A feature's embedding of width D is
split into chunks of Z elements; chunk c of value x starts at

    h_c(x) = ((A_c*x + B_c) mod P) mod |M|,   P = 2^61 - 1,

and element i = c*Z + o is M[(h_c(x) + o) mod |M|] (wrap-around at the end of the array),
multiplied by the optional sign g_i(x) = 2*(((A'_i*x + B'_i) mod P) mod 2) - 1. Every chunk c
and every element i draws its own (A, B) from (method, seed, table, c or i), so chunk positions
and signs are independent across chunks, as the paper's analysis (and HashedNet) assume: two
values that collide in one chunk share any other chunk with probability 1/|M| only. (Hash
version 2; version 1 added C*c to one affine hash, which moved all chunks of two colliding values
together, so it was not HashedNet. Configs record `hash_version`; only 2 is built.)

Z > D (Sec. 3.3, "clubbing multiple embeddings together in a chunk"; needs Z a multiple of D):
r = Z / D values share one block of Z elements. A value's fingerprint is mapped onto [0, P)
(u = 2-universal, injective below P), its group u // r picks the block h_0(u // r) and its slot
u mod r the D-element sub-block, so the r values of a group never overlap each other.

Storage and training: M lives in a TorchRec table of rows of `ROW_WIDTH` = 4 elements (fbgemm's
narrowest row; element j is row j // 4, column j % 4), so the array trains like every other table:
sparse, through fbgemm's TBE with the fused row-wise Adagrad of the trainer (the four elements of
a row share one accumulator), sharded by the planner (table-wise on CPU ranks, row-wise on CUDA)
and quantised and served by the same code as the other tables. Every bag is per example (batch
stride), so the lookup has the same shape on every rank. Element i of a feature's embedding is
read as follows (keys of the table, in schema order):

- a single-valued feature (`multivalent: false`, at most one value per example): one key
  `{feature}@{i}`, whose bag holds the row of its value's position; the element is column
  (position mod 4) of the looked-up row, times the sign;
- a multivalent feature: one key `{feature}@{i}%{c}{+|-}` per column c and sign, whose bag holds
  the rows of the positions in column c with that sign; the element is column c of the pooled
  row of bag (c, +) minus that of (c, -), summed over c.

So the forward is exactly sum_x g_i(x) M[h(x)_i] and the backward sums the signed gradients of
every element that reads M[j] into M[j], as the paper's backward pass does; no per-sample weights
are needed (their gradient would cost fbgemm a pass of its own).

- multiplexed (the ROBE paper's own layout): one array for all features; a feature's hashes are
  drawn per seed group (the paper's table id e; features of one group share embeddings).
- non-multiplexed (the unified-embedding paper's baseline): each feature owns a segment of the
  array sized by its vocabulary share (`sizes`), and wraps around inside its segment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from embedding.hashing import (
    MERSENNE_61,
    UniversalHash,
    derive_seed,
    mod_mersenne61,
    mod_mersenne61_u64,
    mul_mod_mersenne61,
)
from embedding.methods._ops import allocate, bag_index, jagged, mean_pool_fix, table
from embedding.methods.base import EmbeddingMethod, register
from embedding.schema import FeatureSchema

HASH_VERSION = 2
ROW_WIDTH = 4
"""Elements of M per table row: the narrowest row fbgemm's TBE takes (widths are multiples of 4)."""
TABLE = "robe"


def hash_columns(values: torch.Tensor, hashes: Sequence[UniversalHash]) -> torch.Tensor:
    """[n, len(hashes)]: column j is hashes[j](values), all columns in one vectorised pass (the
    same arithmetic as `UniversalHash.__call__`, with per-column coefficients)."""
    if len({h.m for h in hashes}) != 1:
        raise ValueError(f"hash_columns needs one range for all hashes, got {sorted({h.m for h in hashes})}")
    a = torch.tensor([h.a for h in hashes], dtype=torch.int64, device=values.device)
    b = torch.tensor([h.b for h in hashes], dtype=torch.int64, device=values.device)
    x = mod_mersenne61_u64(values).unsqueeze(1)
    return mod_mersenne61(mul_mod_mersenne61(x, a) + b) % hashes[0].m  # type: ignore[arg-type]


def robe_reference(
    x: int,
    width: int,
    block: int,
    size: int,
    chunk: Sequence[UniversalHash],
    sign: Sequence[UniversalHash] | None,
    club: UniversalHash | None = None,
) -> tuple[list[int], list[int]]:
    """Slow Python-int reference: (array index, sign) of each element of value x's embedding."""
    idx = []
    if block > width:
        assert club is not None
        u = club.reference(x)
        start = chunk[0].reference(u // (block // width))
        idx = [(start + (u % (block // width)) * width + i) % size for i in range(width)]
    else:
        idx = [(chunk[i // block].reference(x) + i % block) % size for i in range(width)]
    signs = [1] * width if sign is None else [2 * g.reference(x) - 1 for g in sign]
    return idx, signs


@register
class RobeEmbedding(EmbeddingMethod):
    """`size` = |M| (multiplexed) or `sizes` per feature (non-multiplexed; or `size` split by
    vocabulary share). `block` = Z: below a feature's width ROBE-Z chunks, equal ROBE-D, above it
    (a multiple of the width) clubbed embeddings."""

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
        hash_version: int = HASH_VERSION,
        device: str = "cpu",
    ) -> None:
        super().__init__(schema)
        if hash_version != HASH_VERSION:
            raise ValueError(
                f"ROBE hash_version {hash_version} is not supported (only {HASH_VERSION}: independent chunk "
                "and sign hashes); version 1 moved colliding chunks together, retrain such a model"
            )
        if block < 1:
            raise ValueError(f"block size Z must be >= 1, got {block}")
        for spec in schema.sparse:
            width = schema.width(spec.name)
            if block > width and block % width:
                raise ValueError(
                    f"block size Z={block} exceeds feature {spec.name!r}'s width {width} but is not a multiple "
                    "of it (Z > D clubs Z / D embeddings per block)"
                )
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
        self.total = total
        self._lanes = {n: sum(schema.width(m) for m in names[: names.index(n)]) for n in names}
        self._signs = ("+", "-") if signed else ("+",)
        self._keys: list[str] = []
        for spec in schema.sparse:
            lanes = range(schema.width(spec.name))
            if spec.multivalent:
                cols = [f"%{c}{s}" for c in range(ROW_WIDTH) for s in self._signs]
                self._keys += [f"{spec.name}@{i}{col}" for i in lanes for col in cols]
            else:
                self._keys += [f"{spec.name}@{i}" for i in lanes]
        rows = -(-total // ROW_WIDTH)
        self.ebc = EmbeddingBagCollection(
            tables=[table(TABLE, rows, ROW_WIDTH, self._keys, std=init_std)], device=torch.device(device)
        )
        self._hashes = {n: self.hashes(n) for n in names}

    @property
    def array(self) -> torch.Tensor:
        """M as a flat view of the table (its first `total` elements; the last row's tail is never read)."""
        return self.ebc.embedding_bags[TABLE].weight.view(-1)[: self.total]

    def hashes(self, feature: str) -> tuple[list[UniversalHash], list[UniversalHash] | None, UniversalHash | None]:
        """(chunk hashes h_c onto the feature's array, sign hashes g_i onto {0, 1} or None, the club
        hash onto [0, P) when Z > width or None) of a feature."""
        tag = self.schema.feature(feature).group if self.multiplexed else feature
        width, size = self.schema.width(feature), self.sizes[feature]
        chunks = 1 if self.block >= width else math.ceil(width / self.block)

        def draw(kind: str, i: int, m: int) -> UniversalHash:
            return UniversalHash.from_seed(derive_seed(self.method, self.seed, tag, kind, i), m)

        chunk = [draw("h", c, size) for c in range(chunks)]
        sign = [draw("g", i, 2) for i in range(width)] if self.signed else None
        club = draw("club", 0, MERSENNE_61) if self.block > width else None
        return chunk, sign, club

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "block": self.block,
            "multiplexed": self.multiplexed,
            "signed": self.signed,
            "seed": self.seed,
            "init_std": self.init_std,
            "hash_version": HASH_VERSION,
        }
        if self.multiplexed:
            out["size"] = self.total
        else:
            out["sizes"] = dict(self.sizes)
        return out

    def indices(self, feature: str, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Array positions [n, width] (global, into `weight`) and signs [n, width] (or None)."""
        width, size = self.schema.width(feature), self.sizes[feature]
        chunk, sign_hashes, club = self._hashes[feature]
        lane = torch.arange(width, device=values.device)
        if club is not None:  # Z > width: r values per block, each in its own slot
            r = self.block // width
            u = club(values)
            start = chunk[0](torch.div(u, r, rounding_mode="floor")).unsqueeze(1) + (u % r).unsqueeze(1) * width
            idx = (start + lane) % size
        else:
            z = min(self.block, width)
            starts = hash_columns(values, chunk)  # [n, chunks]
            idx = (starts.repeat_interleave(z, dim=1)[:, :width] + lane % z) % size
        sign = None
        if sign_hashes is not None:
            sign = hash_columns(values, sign_hashes).to(torch.float32) * 2 - 1
        return idx + self._offsets[feature], sign

    def route(self, features: KeyedJaggedTensor) -> tuple[KeyedJaggedTensor, dict[str, tuple[torch.Tensor, ...]]]:
        """The table's input (keys of the module doc, one bag per example) and, per feature, what
        turns the pooled rows back into elements: (column, sign) [batch, width] of single-valued
        features, () of multivalent ones."""
        bags = jagged(features, self.schema)
        batch = features.stride()
        values, lengths = [], []
        picks: dict[str, tuple[torch.Tensor, ...]] = {}
        n_signs = len(self._signs)
        for spec in self.schema.sparse:
            bag = bags[spec.name]
            idx, sign = self.indices(spec.name, bag.values())  # [n, width]
            width = idx.shape[1]
            row, col = torch.div(idx, ROW_WIDTH, rounding_mode="floor"), idx % ROW_WIDTH
            if not spec.multivalent:
                if bag.values().numel() and int(bag.lengths().max()) > 1:
                    raise ValueError(
                        f"feature {spec.name!r} is not multivalent but a bag holds {int(bag.lengths().max())} "
                        "values; declare it `multivalent: true` in the schema"
                    )
                example = bag_index(bag.lengths())
                values.append(row.T.reshape(-1))
                lengths.append(bag.lengths().repeat(width))
                full_col = torch.zeros((batch, width), dtype=torch.int64, device=idx.device)
                full_sign = torch.zeros((batch, width), dtype=torch.float32, device=idx.device)
                full_col[example] = col
                full_sign[example] = sign if sign is not None else 1.0
                picks[spec.name] = (full_col, full_sign)
                continue
            lane = torch.arange(width, device=idx.device)
            negative = (sign < 0).long() if sign is not None else torch.zeros_like(idx)
            key = ((lane * ROW_WIDTH + col) * n_signs + negative) * batch  # [n, width]
            slot = (key + bag_index(bag.lengths()).unsqueeze(1)).reshape(-1)
            order = torch.argsort(slot, stable=True)
            values.append(row.reshape(-1)[order])
            lengths.append(torch.bincount(slot, minlength=width * ROW_WIDTH * n_signs * batch))
            picks[spec.name] = ()
        kjt = KeyedJaggedTensor(keys=self._keys, values=torch.cat(values), lengths=torch.cat(lengths))
        return kjt, picks

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        batch = features.stride()
        kjt, picks = self.route(features)
        pooled = self.ebc(kjt).values()  # [batch, keys * 4], keys in schema order
        per_feature, start = [], 0
        for spec in self.schema.sparse:
            width = self.schema.width(spec.name)
            if picks[spec.name]:
                col, sign = picks[spec.name]
                rows = pooled[:, start : start + width * ROW_WIDTH].view(batch, width, ROW_WIDTH)
                per_feature.append(rows.gather(2, col.unsqueeze(2)).squeeze(2) * sign)
                start += width * ROW_WIDTH
            else:
                n = width * ROW_WIDTH * len(self._signs) * ROW_WIDTH
                rows = pooled[:, start : start + n].view(batch, width, ROW_WIDTH, len(self._signs), ROW_WIDTH)
                signed = rows[:, :, :, 0] - rows[:, :, :, 1] if len(self._signs) == 2 else rows[:, :, :, 0]
                per_feature.append(signed.diagonal(dim1=2, dim2=3).sum(-1))
                start += n
        return self.output(mean_pool_fix(self.schema, jagged(features, self.schema), per_feature))
