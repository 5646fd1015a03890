"""MLET: the collapsed table reproduces the factorised forward and holds n x d parameters."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from embedding.methods import Collisionless, HashingTrick, MLETEmbedding, UnifiedEmbedding, build_method
from embedding.schema import FeatureSchema


@pytest.mark.parametrize(
    ("inner", "args", "cls"),
    [
        ("unified", {"num_rows": 61, "num_blocks": 3}, UnifiedEmbedding),
        ("hashing_trick", {"num_rows": 120}, HashingTrick),
    ],
)
def test_collapse_reproduces_the_factorised_forward(
    inner: str, args: dict[str, Any], cls: type, schema: FeatureSchema, kjt: KeyedJaggedTensor
) -> None:
    torch.manual_seed(0)
    module = MLETEmbedding(schema, inner, args, inner_dim=16, init_std=0.5)
    # one training step so the collapse is not of the initial weights only
    module(kjt).values().square().sum().backward()
    with torch.no_grad():
        for p in module.parameters():
            p -= 0.1 * p.grad
    plain = module.collapse()
    assert type(plain) is cls
    torch.testing.assert_close(plain(kjt).values(), module(kjt).values(), rtol=0, atol=1e-5)
    if inner == "unified":
        assert plain.num_parameters() == args["num_rows"] * schema.embedding_dim
    else:
        assert plain.num_parameters() == sum(r * schema.width(f) for f, r in plain.config()["rows"].items())
    assert plain.config() == module.inner.config()


def test_collapse_keeps_the_collisionless_vocabulary(schema: FeatureSchema, kjt: KeyedJaggedTensor) -> None:
    fitted = Collisionless.fit(schema, [kjt])
    args = {"vocab_sizes": fitted.config()["vocab_sizes"]}
    module = build_method("mlet", schema, inner="collisionless", inner_args=args, inner_dim=8)
    for name, buf in fitted.named_buffers():
        module.inner.get_buffer(name).copy_(buf)
    plain = module.collapse()
    torch.testing.assert_close(plain(kjt).values(), module(kjt).values(), rtol=0, atol=1e-5)
    assert torch.equal(plain.get_buffer("vocab_0"), module.inner.get_buffer("vocab_0"))


def test_inner_dimension_below_d_is_rejected(schema: FeatureSchema) -> None:
    with pytest.raises(ValueError, match="inner dimension"):
        MLETEmbedding(schema, "unified", {"num_rows": 10}, inner_dim=2)


@pytest.mark.parametrize("inner", ["unified", "hashing_trick"])
def test_base_table_is_xavier_and_projection_std_is_the_papers(inner: str, schema: FeatureSchema) -> None:
    """Xavier-uniform inner tables, bound sqrt(6 / (n + k)) over the logical table's n rows (all blocks
    of a unified table); projection N(0, 0.5) by default, configurable (0.25 for DLRM)."""
    rows = 3000 if inner == "unified" else None
    args: dict[str, Any] = (
        {"num_rows": 3000, "num_blocks": 3}
        if inner == "unified"
        else {"rows": dict.fromkeys(schema.sparse_names, 2000)}
    )
    torch.manual_seed(0)
    k = 32
    module = MLETEmbedding(schema, inner, args, inner_dim=k)
    for cfg in module.inner.ebc.embedding_bag_configs():  # type: ignore[union-attr]
        weight = module.inner.ebc.embedding_bags[cfg.name].weight  # type: ignore[union-attr]
        bound = math.sqrt(6 / ((rows or cfg.num_embeddings) + k))
        assert weight.abs().max() <= bound
        assert abs(weight.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    projections = torch.cat([p.reshape(-1) for p in module.projections])
    assert abs(projections.std().item() - 0.5) < 0.05
    dlrm = MLETEmbedding(schema, inner, args, inner_dim=k, init_std=0.25)
    assert abs(torch.cat([p.reshape(-1) for p in dlrm.projections]).std().item() - 0.25) < 0.03
    assert module.config()["init_std"] == 0.5
