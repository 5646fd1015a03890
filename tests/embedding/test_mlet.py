"""MLET: the collapsed table reproduces the factorised forward and holds n x d parameters."""

from __future__ import annotations

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
