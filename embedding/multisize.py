"""Multi-size unified embedding: how many lookups (rows of the shared table) each feature gets.

Coelho et al. ("Unified Embedding", Sec. 3 and 5.2) give a feature of width k*d by concatenating k
lookups into the one table of rows of width d, "typically 1~6 row lookups for each feature
depending on the desired width"; the table's size follows from the memory budget alone, and only
the per-feature width is tuned. Per-feature lookups are part of the feature schema
(`SparseFeature.lookups` in `embedding/schemas/*.yaml`); this module sets them automatically.

The rule (`allocate_lookups`). The paper tunes widths per feature (AutoML) and states no closed
rule, so we use the usual heuristic that an embedding's width should grow with the fourth root of
its vocabulary (the rule of thumb of Google's "Introducing TensorFlow Feature Columns", 2017:
dimension ~ vocabulary^0.25), spent under a total width budget:

    k_t ∝ n_t ** 0.25,   1 <= k_t <= max_lookups (6, the paper's range),   sum_t k_t = W / d,

where n_t is feature t's cardinality (the churn tracker's distinct IDs per window, see
`trainer.churn.report.lookup_plan`, or the schema's `vocab_size`) and W the total embedding width
per example. The bounded continuous shares are found by water-filling (bisection on the common
factor), then rounded to integers by largest remainder, ties to the larger cardinality, so the
sum is exact and a feature with more values never gets fewer lookups than one with fewer.

    lookups = allocate_lookups({"user": 943, "movie": 1682, "gender": 2}, total_lookups=6)
    schema = with_lookups(schema, lookups)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from embedding.schema import FeatureSchema

MAX_LOOKUPS = 6
"""The top of the paper's "typically 1~6 row lookups" range."""
EXPONENT = 0.25
"""Width ~ cardinality ** EXPONENT (the fourth-root rule of thumb)."""


def allocate_lookups(
    cardinalities: Mapping[str, float],
    total_lookups: int,
    *,
    max_lookups: int = MAX_LOOKUPS,
    exponent: float = EXPONENT,
) -> dict[str, int]:
    """Lookups per feature under the rule of the module doc; keys in the order given."""
    names = list(cardinalities)
    if not names:
        raise ValueError("allocate_lookups needs at least one feature")
    bad = {n: c for n, c in cardinalities.items() if not (c >= 0 and math.isfinite(c))}
    if bad:
        raise ValueError(f"cardinalities must be finite and >= 0, got {bad}")
    if max_lookups < 1:
        raise ValueError(f"max_lookups must be >= 1, got {max_lookups}")
    if not len(names) <= total_lookups <= max_lookups * len(names):
        raise ValueError(
            f"total_lookups={total_lookups} cannot give {len(names)} features between 1 and {max_lookups} "
            f"lookups each; expected {len(names)} <= total_lookups <= {max_lookups * len(names)}"
        )
    weights = {n: max(float(cardinalities[n]), 1.0) ** exponent for n in names}

    def spent(scale: float) -> float:
        return sum(min(max(scale * w, 1.0), max_lookups) for w in weights.values())

    low, high = 0.0, max_lookups / min(weights.values())  # spent(high) = max_lookups * len(names)
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if spent(mid) < total_lookups else (low, mid)
    targets = {n: min(max(high * w, 1.0), float(max_lookups)) for n, w in weights.items()}
    out = {n: min(max_lookups, max(1, math.floor(round(t, 9)))) for n, t in targets.items()}
    left = total_lookups - sum(out.values())
    order = sorted(names, key=lambda n: (-(targets[n] - out[n]), -weights[n], names.index(n)))
    while left > 0:  # largest remainder first; floating error may leave a unit more than the remainders
        room = [n for n in order if out[n] < max_lookups]
        for name in room[:left]:
            out[name] += 1
        left = total_lookups - sum(out.values())
    while left < 0:
        name = next(n for n in reversed(order) if out[n] > 1)
        out[name] -= 1
        left += 1
    return out


def lookups_for_width(total_width: int, embedding_dim: int) -> int:
    """The lookups a total width W buys with rows of width d (W must be a multiple of d)."""
    if total_width < embedding_dim or total_width % embedding_dim:
        raise ValueError(
            f"total width {total_width} must be a positive multiple of the embedding_dim {embedding_dim}"
        )
    return total_width // embedding_dim


def schema_cardinalities(schema: FeatureSchema) -> dict[str, float]:
    """The schema's vocab_size estimates; features without one get the mean of the others."""
    known = [s.vocab_size for s in schema.sparse if s.vocab_size]
    fill = sum(known) / len(known) if known else 1.0
    return {s.name: float(s.vocab_size or fill) for s in schema.sparse}


def with_lookups(schema: FeatureSchema, lookups: Mapping[str, int], embedding_dim: int | None = None) -> FeatureSchema:
    """The schema with these per-feature lookups (features not named keep theirs) and optionally
    another row width d."""
    unknown = sorted(set(lookups) - set(schema.sparse_names))
    if unknown:
        raise ValueError(f"lookups name features {unknown} that schema {schema.name!r} lacks: {schema.sparse_names}")
    doc = schema.model_dump()
    for spec in doc["sparse"]:
        spec["lookups"] = int(lookups.get(spec["name"], spec["lookups"]))
    if embedding_dim is not None:
        doc["embedding_dim"] = embedding_dim
    return FeatureSchema.model_validate(doc)  # validated again: bounds on lookups and d hold


def multisize_schema(
    schema: FeatureSchema,
    total_width: int,
    embedding_dim: int,
    cardinalities: Mapping[str, float] | None = None,
    max_lookups: int = MAX_LOOKUPS,
) -> FeatureSchema:
    """`schema` as a multi-size unified model: rows of width `embedding_dim`, lookups allocated from
    `cardinalities` (default: the schema's vocab_size) so the features' widths sum to `total_width`."""
    counts = dict(cardinalities) if cardinalities is not None else schema_cardinalities(schema)
    missing = sorted(set(schema.sparse_names) - set(counts))
    if missing:
        raise ValueError(f"no cardinality for features {missing}")
    total = lookups_for_width(total_width, embedding_dim)
    plan = allocate_lookups({n: counts[n] for n in schema.sparse_names}, total, max_lookups=max_lookups)
    return with_lookups(schema, plan, embedding_dim)
