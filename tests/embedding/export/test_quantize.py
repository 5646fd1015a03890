"""Row-wise quantisation is a pure function of each row (what makes deltas exact), and the quantised
lookup module pools exactly what the dequantised table would."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from embedding.export.quantize import QUANTIZATIONS, dequantize_rows, quantize_rows, table_quantization
from embedding.serving.tables import QuantEmbeddingBags


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 40),
    dim=st.sampled_from([4, 8, 12, 16, 32]),
    quantization=st.sampled_from(QUANTIZATIONS),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-4, 10.0),
)
def test_rows_quantise_alike_alone_or_in_a_table(
    rows: int, dim: int, quantization: str, seed: int, scale: float
) -> None:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, dim, generator=g) * scale
    ids = torch.randperm(rows, generator=g)[: max(1, rows // 3)]
    assert torch.equal(quantize_rows(weight, quantization)[ids], quantize_rows(weight[ids], quantization))
    back = dequantize_rows(quantize_rows(weight, quantization), quantization)
    span = (weight.max(dim=1).values - weight.min(dim=1).values).unsqueeze(1)
    # fp16: relative spacing 2^-10, but a fixed 2^-24 below 2^-14 (subnormals)
    fp16_step = torch.clamp(weight.abs() * 1e-3, min=2.0**-24)
    step = {"int8": span / 255, "int4": span / 15, "fp16": fp16_step, "fp32": torch.zeros_like(span)}
    assert ((back - weight).abs() <= step[quantization] * 0.51 + 1e-6 * scale).all()


def test_int4_falls_back_for_dims_it_cannot_pack() -> None:
    assert table_quantization("int4", 16) == "int4"
    assert table_quantization("int4", 2) == "fp16"  # int8 would take 10 bytes a row, fp16 takes 4
    assert table_quantization("int4", 10) == "int8"
    assert table_quantization("int8", 8) == "fp16" and table_quantization("int8", 9) == "int8"
    assert table_quantization("int4", 4) == "int4"
    assert table_quantization("fp16", 2) == "fp16"
    with pytest.raises(ValueError, match="not one of"):
        table_quantization("int3", 16)


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_quantised_bags_pool_like_the_dequantised_collection(quantization: str, weighted: bool) -> None:
    torch.manual_seed(0)
    configs = [
        EmbeddingBagConfig(name="a", num_embeddings=50, embedding_dim=8, feature_names=["f1", "f2"]),
        EmbeddingBagConfig(
            name="b",
            num_embeddings=30,
            embedding_dim=4,
            feature_names=["f3"],
            pooling=PoolingType.SUM if weighted else PoolingType.MEAN,  # torch: weights need sum
        ),
        EmbeddingBagConfig(name="c", num_embeddings=20, embedding_dim=8, feature_names=["f4"]),
    ]
    ebc = EmbeddingBagCollection(tables=configs, is_weighted=weighted)
    stored = {c.name: quantize_rows(ebc.embedding_bags[c.name].weight, quantization) for c in configs}
    with torch.no_grad():
        for c in configs:
            ebc.embedding_bags[c.name].weight.copy_(dequantize_rows(stored[c.name], quantization))
    quant = QuantEmbeddingBags(configs, quantization, stored)
    lengths = torch.tensor([2, 0, 3, 1, 1, 2, 0, 4, 1, 1, 2, 2])  # 4 features x 3 examples, keys shuffled below
    keys = ["f3", "f1", "f4", "f2"]
    limits = {"f1": 50, "f2": 50, "f3": 30, "f4": 20}
    values = torch.cat(
        [
            torch.randint(0, limits[k], (int(n),))
            for k, n in zip([k for k in keys for _ in range(3)], lengths, strict=True)
        ]
    )
    weights = torch.rand(values.shape[0]) if weighted else None
    kjt = KeyedJaggedTensor(keys=keys, values=values, lengths=lengths, weights=weights)
    expected, got = ebc(kjt), quant(kjt)
    assert got.keys() == expected.keys() == ["f1", "f2", "f3", "f4"]
    tolerance = {"int8": 2e-3, "int4": 1e-6, "fp16": 1e-6, "fp32": 1e-6}[quantization]  # int8: fp16 scale/bias
    assert (got.values() - expected.values()).abs().max().item() < tolerance
    clone = quant.clone()
    clone.write_rows("a", torch.tensor([0]), quantize_rows(torch.ones(1, 8), quantization))
    assert torch.equal(quant(kjt).values(), got.values()), "a clone's writes do not reach the original"
