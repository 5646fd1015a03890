"""The multi-size comparison's variants hold equal table bytes and equal width; its table renders from JSON."""

from __future__ import annotations

import json

import numpy as np

from bench import quality_multisize as qm
from bench.quality import Split
from embedding.schema import load_schema


def _split() -> Split:
    schema = load_schema("movielens")
    sizes = {"user": 751, "movie": 1616, "age": 59, "gender": 2, "occupation": 21, "zip": 648}
    vocab = {n: np.arange(k) for n, k in sizes.items()}
    return Split("movielens", schema, [], [], vocab, 10, 5, 0.5)


def test_variants_have_the_same_width_and_the_rule_puts_lookups_where_the_values_are() -> None:
    split = _split()
    schemas = {label: qm.variant_schema(label, split) for label in qm.VARIANTS}
    assert {s.total_width for s in schemas.values()} == {split.schema.total_width}
    multi = {s.name: s.lookups for s in schemas["unified_multisize"].sparse}
    assert multi["movie"] >= multi["user"] > multi["age"] >= multi["gender"] == 1
    assert {s.lookups for s in schemas["unified_k2"].sparse} == {2}


def test_render_reads_the_json_document_alone() -> None:
    facts = {
        "n_train": 10, "n_test": 5, "collisionless_bytes": 1000, "cardinalities": {"user": 3},
        "lookups": {v: {"user": 1} for v in qm.VARIANTS}, "embedding_dim": dict.fromkeys(qm.VARIANTS, 8),
        "total_width": dict.fromkeys(qm.VARIANTS, 16),
    }  # fmt: skip
    runs = [
        {"dataset": "ml", "label": label, "share": 0.1, "budget_bytes": 100, "bytes": 100, "epochs": 1,
         "seed": seed, "auc": 0.7 + 0.01 * i + 0.001 * seed, "logloss": 0.6, "train_s": 1.0}
        for i, label in enumerate(qm.VARIANTS) for seed in range(2)
    ]  # fmt: skip
    data = {"machine": {"platform": "x", "torch": "y", "load_1m": 1.0}, "spec": {}, "seeds": 2,
            "facts": {"ml": facts}, "runs": runs}  # fmt: skip
    text = qm.render(json.loads(json.dumps(data)))
    assert "| 0.1 x collisionless | 1 | unified_multisize |" in text
    assert "+0.0200 ± 0.0000 | +0.0100 ± 0.0000" in text  # paired differences against unified and unified_k2
