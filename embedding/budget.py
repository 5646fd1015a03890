"""Equal-memory configurations: turn a memory budget into each method's `ModelConfig.method_args`.

As in the unified-embedding paper's comparison, non-multiplexed methods split the budget over
features by vocabulary share (a feature with 10% of the vocabulary gets 10% of the parameters);
multiplexed methods spend it on one shared parameter space. Bytes are trainable fp32 parameters
(`EmbeddingMethod.num_bytes()`); for MLET the budget is the collapsed (served) table, since the
factorisation exists only during training. Rounding is absorbed by the largest feature, so every
configuration lands within 1% of the budget whenever the budget holds a few rows per feature.

Compositional variants follow Shi et al.: `qr_threshold` keeps a full table (moduli [n]) for
every feature with at most `threshold` values, smallest first while those tables take at most
`threshold_share` of the budget (their Sec. 5.4 compresses only tables above a size threshold),
and compresses the others with QR; `path_qr` picks the fewest path functions m_2 whose
partitions still tell all n values apart (m_1 * m_2 >= n, the complementary condition), or the
most values it can when the budget cannot. With `known_vocab`, compositional variants enumerate
the vocabulary (`vocab_sizes`; fill it with `set_vocabulary`) instead of hashing values first.

    from embedding.budget import budget_method_args
    for label, (method, args) in budget_method_args(schema, 8 << 20).items():
        ModelConfig(method=method, method_args=args)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from embedding.methods._ops import vocab_shares
from embedding.methods.compositional import component_widths, coprime_moduli, path_width
from embedding.schema import FeatureSchema

FP32 = 4

VARIANTS = (
    "unified",
    "hashing_trick",
    "hash_embedding",
    "hash_embedding_mux",
    "hashednet",
    "hashednet_mux",
    "robe",
    "robe_mux",
    "qr",
    "qr_mux",
    "crt",
    "pq",
    "pq_mux",
    "path_qr",
    "qr_threshold",
    "managed_collision",
    "mlet_unified",
    "mlet_hashing_trick",
)


def with_vocab(schema: FeatureSchema, vocab: Mapping[str, int] | None) -> FeatureSchema:
    """The schema with vocab_size replaced by the given estimates (features not named keep theirs)."""
    if not vocab:
        return schema
    sparse = tuple(
        s.model_copy(update={"vocab_size": int(vocab[s.name])}) if s.name in vocab else s for s in schema.sparse
    )
    return schema.model_copy(update={"sparse": sparse})


def _rows(params: float, schema: FeatureSchema, widths: Mapping[str, int], minimum: int = 1) -> dict[str, int]:
    """Rows per feature so sum(rows_f * widths_f) is as close to `params` as integers allow."""
    shares = vocab_shares(schema)
    rows = {n: max(minimum, round(params * s / widths[n])) for n, s in shares.items()}
    big = max(shares, key=lambda n: shares[n])
    rest = sum(r * widths[n] for n, r in rows.items() if n != big)
    rows[big] = max(minimum, round((params - rest) / widths[big]))
    return rows


def _balanced(total: int, k: int) -> list[int]:
    base, extra = divmod(max(total, k), k)
    return [base + (1 if i < extra else 0) for i in range(k)]


def _moduli(units: float, k: int, partition: str) -> list[int]:
    """k moduli summing to about `units` (pairwise coprime for crt)."""
    if partition == "crt":
        return coprime_moduli(max(1, math.floor(units / k - (k - 1) / 2)), k)
    return _balanced(round(units), k)


def _path_moduli(params: float, width: int, vocab: int, hidden: int) -> list[int]:
    """[m_1, m_2] for a path-based feature: the fewest path functions m_2 with m_1 * m_2 >= vocab
    (m_1 rows of `width` and m_2 functions spending `params`), else the most values coverable."""
    fn = path_width(width, hidden)
    best, best_cover = 1, 0
    for m2 in range(1, max(1, int(params // (2 * fn))) + 1):
        cover = m2 * max(1, math.floor((params - m2 * fn) / width))
        if cover >= vocab:
            best = m2
            break
        if cover > best_cover:
            best, best_cover = m2, cover
    return [max(1, round((params - best * fn) / width)), best]


def _compositional(
    params: float,
    widths: Mapping[str, int],
    shares: Mapping[str, float],
    vocab: Mapping[str, int],
    k: int,
    partition: str,
    operation: str,
    path_hidden: int = 0,
) -> dict[str, list[int]]:
    """Moduli per feature of `shares` (share of `params` each), rounding absorbed by the largest."""

    def one(p: float, n: str) -> list[int]:
        w = widths[n]
        if operation == "path":
            return _path_moduli(p, w, vocab[n], path_hidden)
        if operation == "concat":
            return [max(1, round(p / w))] * k
        return _moduli(p / w, k, partition)

    total = sum(shares.values())
    out = {n: one(params * s / total, n) for n, s in shares.items()}
    big = max(shares, key=lambda n: shares[n])
    rest = sum(_comp_params(out[n], widths[n], operation, path_hidden) for n in out if n != big)
    out[big] = one(params - rest, big)
    return out


def _comp_params(moduli: Sequence[int], width: int, operation: str, path_hidden: int = 0) -> int:
    widths = component_widths(width, len(moduli), operation, path_hidden)
    return sum(m * w for m, w in zip(moduli, widths, strict=True))


def _threshold_split(
    params: float, widths: Mapping[str, int], vocab: Mapping[str, int], threshold: int, share: float
) -> dict[str, list[int]]:
    """Full tables ([n]) for the small features (see the module doc); the rest of the budget to QR."""
    full: dict[str, list[int]] = {}
    spent = 0
    for name in sorted((n for n in widths if vocab[n] <= threshold), key=lambda n: vocab[n]):
        cost = vocab[name] * widths[name]
        if spent + cost > share * params or len(full) == len(widths) - 1:
            break
        full[name], spent = [vocab[name]], spent + cost
    rest = {n: float(vocab[n]) for n in widths if n not in full}
    return {**full, **_compositional(params - spent, widths, rest, vocab, 2, "qr", "mult")}


def budget_method_args(
    schema: FeatureSchema,
    budget_bytes: int,
    vocab: Mapping[str, int] | None = None,
    variants: Sequence[str] = VARIANTS,
    *,
    num_blocks: int = 1,
    num_hashes: int = 2,
    importance_share: float = 0.1,
    robe_block: int | None = None,
    parts: int = 2,
    mlet_inner_dim: int | None = None,
    path_hidden: int = 0,
    threshold: int = 2000,
    threshold_share: float = 0.5,
    known_vocab: bool = False,
    seed: int = 0,
) -> dict[str, tuple[str, dict[str, Any]]]:
    """label -> (method name, method_args) for each variant, all spending `budget_bytes`.

    `vocab` overrides the schema's vocab_size estimates; `robe_block` defaults to d (ROBE-D; any
    Z works, below d ROBE-Z chunks, above d a multiple of every feature's width); `parts` is k of
    the compositional methods; `mlet_inner_dim` defaults to 4d; `path_hidden` is the path MLP's
    hidden width (0: affine maps); `threshold`, `threshold_share` and `known_vocab`: see the
    module doc.
    """
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown budget variants {unknown}; known: {list(VARIANTS)}")
    schema = with_vocab(schema, vocab)
    d = schema.embedding_dim
    params = budget_bytes / FP32
    if params < 2 * d * len(schema.sparse):
        raise ValueError(
            f"budget of {budget_bytes} bytes is below two rows per feature ({2 * d * len(schema.sparse)}"
            f" parameters of {FP32} bytes)"
        )
    widths = {s.name: schema.width(s.name) for s in schema.sparse}
    shares = vocab_shares(schema)
    known = [s.vocab_size for s in schema.sparse if s.vocab_size]
    fill = round(sum(known) / len(known)) if known else 1  # as vocab_shares fills unknown sizes
    counts = {s.name: int(s.vocab_size or fill) for s in schema.sparse}
    block = robe_block or d
    emb = (1 - importance_share) * params
    imp = importance_share * params
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    build = {
        "unified": lambda: ("unified", {"num_rows": round(params / d), "num_blocks": num_blocks, "seed": seed}),
        "hashing_trick": lambda: ("hashing_trick", {"rows": _rows(params, schema, widths), "seed": seed}),
        "hash_embedding": lambda: (
            "hash_embedding",
            {
                "rows": _rows(emb, schema, widths),
                "importance_rows": _rows(imp, schema, dict.fromkeys(widths, num_hashes)),
                "num_hashes": num_hashes,
                "multiplexed": False,
                "seed": seed,
            },
        ),
        "hash_embedding_mux": lambda: (
            "hash_embedding",
            {
                "num_rows": max(1, round(emb / d)),
                "importance_rows": max(1, round(imp / num_hashes)),
                "num_hashes": num_hashes,
                "multiplexed": True,
                "seed": seed,
            },
        ),
        "hashednet": lambda: (
            "robe",
            {"sizes": _rows(params, schema, dict.fromkeys(widths, 1)), "block": 1, "multiplexed": False, "seed": seed},
        ),
        "hashednet_mux": lambda: ("robe", {"size": round(params), "block": 1, "multiplexed": True, "seed": seed}),
        "robe": lambda: (
            "robe",
            {
                "sizes": _rows(params, schema, dict.fromkeys(widths, 1)),
                "block": block,
                "multiplexed": False,
                "seed": seed,
            },
        ),
        "robe_mux": lambda: ("robe", {"size": round(params), "block": block, "multiplexed": True, "seed": seed}),
        "qr": lambda: _comp("qr", "mult", False),
        "qr_mux": lambda: _comp("qr", "mult", True),
        "crt": lambda: _comp("crt", "mult", False),
        "pq": lambda: _comp("qr", "concat", False),
        "pq_mux": lambda: _comp("qr", "concat", True),
        "path_qr": lambda: _comp("qr", "path", False),
        "managed_collision": lambda: ("managed_collision", {"rows": _rows(params, schema, widths, minimum=2)}),
        "mlet_unified": lambda: (
            "mlet",
            {"inner": "unified", "inner_args": build["unified"]()[1], "inner_dim": mlet_inner_dim or 4 * d},
        ),
        "mlet_hashing_trick": lambda: (
            "mlet",
            {"inner": "hashing_trick", "inner_args": build["hashing_trick"]()[1], "inner_dim": mlet_inner_dim or 4 * d},
        ),
    }

    def _comp(partition: str, operation: str, mux: bool) -> tuple[str, dict[str, Any]]:
        k = 2 if operation == "path" else parts
        hidden = path_hidden if operation == "path" else 0
        moduli: Any
        if mux:
            moduli = _compositional(params, {"*": d}, {"*": 1.0}, {"*": sum(counts.values())}, k, partition, operation)
            moduli = moduli["*"]
        else:
            moduli = _compositional(params, widths, shares, counts, k, partition, operation, hidden)
        return _comp_args(moduli, partition, operation, mux, hidden)

    def _comp_args(
        moduli: Any, partition: str, operation: str, mux: bool, hidden: int = 0
    ) -> tuple[str, dict[str, Any]]:
        args: dict[str, Any] = {
            "moduli": moduli,
            "partition": partition,
            "operation": operation,
            "multiplexed": mux,
            "seed": seed,
        }
        if hidden:
            args["path_hidden"] = hidden
        if known_vocab and not mux:
            args["vocab_sizes"] = dict(counts)
        return "compositional", args

    build["qr_threshold"] = lambda: _comp_args(
        _threshold_split(params, widths, counts, threshold, threshold_share), "qr", "mult", False
    )

    for label in variants:
        out[label] = build[label]()
    return out
