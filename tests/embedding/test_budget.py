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
