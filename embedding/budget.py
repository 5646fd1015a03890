"""Equal-memory configurations: turn a memory budget into each method's `ModelConfig.method_args`.

As in the unified-embedding paper's comparison, non-multiplexed methods split the budget over
features by vocabulary share (a feature with 10% of the vocabulary gets 10% of the parameters);
multiplexed methods spend it on one shared parameter space. Bytes are trainable fp32 parameters
(`EmbeddingMethod.num_bytes()`); for MLET the budget is the collapsed (served) table, since the
factorisation exists only during training. Rounding is absorbed by the largest feature, so every
configuration lands within 1% of the budget whenever the budget holds a few rows per feature.

    from embedding.budget import budget_method_args
    for label, (method, args) in budget_method_args(schema, 8 << 20).items():
        ModelConfig(method=method, method_args=args)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from embedding.methods._ops import vocab_shares
from embedding.methods.compositional import component_widths, coprime_moduli
from embedding.methods.hash_embedding import importance_dim
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


def _compositional(
    params: float, widths: Mapping[str, int], schema: FeatureSchema | None, k: int, partition: str, operation: str
) -> Any:
    """Moduli per feature (or one list when schema is None: multiplexed, width = widths['*'])."""
    shares = vocab_shares(schema) if schema is not None else {"*": 1.0}

    def one(p: float, w: int) -> list[int]:
        if operation == "path":
            m2 = max(1, math.floor(0.1 * p / (w * w)))
            return [max(1, round((p - m2 * w * w) / w)), m2]
        if operation == "concat":
            return [max(1, round(p / w))] * k
        return _moduli(p / w, k, partition)

    out = {n: one(params * s, widths[n]) for n, s in shares.items()}
    big = max(shares, key=lambda n: shares[n])
    rest = sum(_comp_params(out[n], widths[n], operation) for n in out if n != big)
    out[big] = one(params - rest, widths[big])
    return out if schema is not None else out["*"]


def _comp_params(moduli: Sequence[int], width: int, operation: str) -> int:
    if operation == "path":
        return moduli[0] * width + moduli[1] * width * width
    return sum(m * w for m, w in zip(moduli, component_widths(width, len(moduli), operation), strict=True))


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
    seed: int = 0,
) -> dict[str, tuple[str, dict[str, Any]]]:
    """label -> (method name, method_args) for each variant, all spending `budget_bytes`.

    `vocab` overrides the schema's vocab_size estimates; `robe_block` defaults to d (ROBE-Z with
    Z = d); `parts` is k of the compositional methods; `mlet_inner_dim` defaults to 4d.
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
                "importance_rows": _rows(imp, schema, dict.fromkeys(widths, importance_dim(num_hashes))),
                "num_hashes": num_hashes,
                "multiplexed": False,
                "seed": seed,
            },
        ),
        "hash_embedding_mux": lambda: (
            "hash_embedding",
            {
                "num_rows": max(1, round(emb / d)),
                "importance_rows": max(1, round(imp / importance_dim(num_hashes))),
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
        moduli = _compositional(params, {"*": d} if mux else widths, None if mux else schema, k, partition, operation)
        return "compositional", {
            "moduli": moduli,
            "partition": partition,
            "operation": operation,
            "multiplexed": mux,
            "seed": seed,
        }

    for label in variants:
        out[label] = build[label]()
    return out
