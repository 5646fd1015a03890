"""Equal-memory configurations: every variant spends the budget within 1%."""

from __future__ import annotations

import pytest

from embedding.budget import VARIANTS, budget_method_args
from embedding.methods import build_method
from embedding.schema import FeatureSchema


@pytest.mark.parametrize("budget", [64_000, 250_000, 1_000_000])
def test_every_variant_lands_within_one_percent(schema: FeatureSchema, budget: int) -> None:
    configs = budget_method_args(schema, budget, vocab={"user": 20_000})
    assert set(configs) == set(VARIANTS)
    for label, (method, args) in configs.items():
        module = build_method(method, schema, **args)
        served = module.collapse() if method == "mlet" else module
        assert abs(served.num_bytes() / budget - 1) <= 0.01, f"{label}: {served.num_bytes()} bytes for {budget}"


def test_vocabulary_estimates_steer_the_per_feature_split(schema: FeatureSchema) -> None:
    args = budget_method_args(schema, 400_000, vocab={"user": 100_000}, variants=["hashing_trick"])["hashing_trick"][1]
    rows = args["rows"]
    assert rows["user"] > 50 * rows["tags"]


def test_too_small_a_budget_is_an_error(schema: FeatureSchema) -> None:
    with pytest.raises(ValueError, match="below two rows per feature"):
        budget_method_args(schema, 100)


def test_qr_threshold_keeps_small_tables_whole_and_compresses_the_large(schema: FeatureSchema) -> None:
    """Shi et al.'s threshold: a full table (one modulus, n rows) for features of at most
    `threshold` values, QR for the larger ones; the budget is still met."""
    vocab = {"user": 20_000, "item": 5_000, "tags": 50, "city": 20, "home_city": 20}
    method, args = budget_method_args(schema, 400_000, vocab=vocab, variants=["qr_threshold"], threshold=100)[
        "qr_threshold"
    ]
    moduli = args["moduli"]
    assert {n: m for n, m in moduli.items() if len(m) == 1} == {"tags": [50], "city": [20], "home_city": [20]}
    assert all(len(moduli[n]) == 2 for n in ("user", "item"))
    module = build_method(method, schema, **args)
    assert abs(module.num_bytes() / 400_000 - 1) <= 0.01
    low = budget_method_args(schema, 400_000, vocab=vocab, variants=["qr_threshold"], threshold=10)
    assert all(len(m) == 2 for m in low["qr_threshold"][1]["moduli"].values()), "nothing is small enough"


def test_path_qr_uses_as_many_path_functions_as_uniqueness_needs(schema: FeatureSchema) -> None:
    vocab = {"user": 20_000, "item": 5_000, "tags": 50, "city": 20, "home_city": 20}
    for budget in (200_000, 2_000_000):
        args = budget_method_args(schema, budget, vocab=vocab, variants=["path_qr"])["path_qr"][1]
        m1, m2 = args["moduli"]["user"]
        assert m2 >= 1
        if budget == 2_000_000:
            assert m1 * m2 >= 20_000, "the budget allows complementary partitions"
        else:
            assert m2 > 1, "a tight budget still gets several path functions"


def test_known_vocab_enumerates_compositional_features(schema: FeatureSchema) -> None:
    vocab = {"user": 300, "item": 200, "tags": 50, "city": 20, "home_city": 20}
    args = budget_method_args(schema, 200_000, vocab=vocab, variants=["qr", "qr_mux"], known_vocab=True)
    assert args["qr"][1]["vocab_sizes"] == vocab
    assert "vocab_sizes" not in args["qr_mux"][1], "multiplexed compositional has no vocabulary"


def test_hash_embedding_importance_weights_are_packed(schema: FeatureSchema) -> None:
    """The importance table spends k parameters per row (k = 2 of 4 columns used when padded)."""
    method, args = budget_method_args(schema, 400_000, variants=["hash_embedding_mux"], num_hashes=2)[
        "hash_embedding_mux"
    ]
    module = build_method(method, schema, **args)
    importance = sum(p.numel() for p in module.importance.parameters())  # type: ignore[union-attr]
    assert importance - 2 * args["importance_rows"] in range(4)
