"""The lean serving forward of unified-embedding models answers exactly what the module's forward answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from embedding import Event, Featurizer
from embedding.model import ModelConfig, build_model
from embedding.schema import DenseFeature, FeatureSchema, SparseFeature
from embedding.serving import ServingModel
from registry.exporter import Exporter, export_model
from registry.loading import load_serving_model, refresh
from registry.store import LocalModelStore

SCHEMA = FeatureSchema(
    name="lean-test",
    embedding_dim=4,
    sparse=(
        SparseFeature(name="user", dtype="int"),
        SparseFeature(name="item", dtype="int", lookups=2),
        SparseFeature(name="tags", multivalent=True, pooling="mean"),
        SparseFeature(name="city", seed_group="geo"),
        SparseFeature(name="home_city", seed_group="geo", multivalent=True),
    ),
    dense=(DenseFeature(name="price", transform="log1p"), DenseFeature(name="age", default=30.0)),
)


def events(n: int, seed: int = 0) -> list[Event]:
    """Single and multivalent values, empty lists, missing features and dense defaults."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        r = torch.randint(0, 1000, (6,), generator=g).tolist()
        sparse: dict = {"user": r[0], "item": r[1], "tags": [f"t{r[2] % 7}", f"t{r[3] % 5}"][: r[4] % 3]}
        if r[5] % 4:
            sparse["city"] = f"c{r[5] % 9}"
        sparse["home_city"] = [f"c{r[4] % 9}"] * (r[3] % 3)
        dense = {"price": float(r[2])} if r[1] % 2 else {}
        out.append(Event(event_id=f"e{i}", ts=i, sparse=sparse, dense=dense))
    return out


def served(tmp_path: Path, quantization: str, config: ModelConfig, seen: bool = False) -> ServingModel:
    model = build_model(SCHEMA, config)
    with torch.no_grad():  # move the rows off their tiny initialisation so every lookup matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    seen_rows = None
    if seen:
        seen_rows = {model.sparse.table_name(b): torch.arange(0, size, 3) for b, size in enumerate(model.sparse.sizes)}
    store = LocalModelStore(tmp_path / "models")
    export_model(model, store, quantization, seen_rows=seen_rows)
    return load_serving_model(store)


CONFIGS = {
    "one block, dense arch": ModelConfig(method_args={"num_rows": 500}, dense_arch=(8,), over_arch=(16, 8)),
    "3 blocks, no dense arch": ModelConfig(
        method_args={"num_rows": 500, "num_blocks": 3}, dense_arch=(), over_arch=(8,), cross_layers=1, cross_rank=2
    ),
    "uneven blocks, no cross": ModelConfig(method_args={"num_rows": 9, "num_blocks": 4}, cross_layers=0),
}


@pytest.mark.parametrize("quantization", ["int8", "int4", "fp16", "fp32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_lean_forward_equals_the_module(tmp_path: Path, quantization: str, name: str) -> None:
    model = served(tmp_path, quantization, CONFIGS[name])
    assert model.__dict__["_lean"] is not None, "unified models are served by the lean path"
    featurizer = Featurizer(SCHEMA)
    for n in (1, 2, 17, 64):
        batch = featurizer(events(n, seed=n))
        with torch.inference_mode():
            expected = model.module(batch.sparse, batch.dense)
        assert n < 17 or expected.std() > 0.01, "the logits should differ between events"
        assert torch.equal(model.logits(batch), expected), f"{name}, {quantization}, batch {n}"
        assert torch.equal(model.predict(batch), torch.sigmoid(expected))
        assert torch.equal(model.score(batch).probabilities, torch.sigmoid(expected))


def test_score_counts_what_seen_mask_marks(tmp_path: Path) -> None:
    model = served(tmp_path, "int8", CONFIGS["3 blocks, no dense arch"], seen=True)
    batch = Featurizer(SCHEMA)(events(50))
    masks = model.seen_mask(batch)
    assert masks is not None
    unseen = model.score(batch).unseen
    assert unseen == {name: int((~mask).sum()) for name, mask in masks.items()}
    assert any(unseen.values()) and any(count < masks[name].numel() for name, count in unseen.items())


def test_deltas_reach_the_lean_path(tmp_path: Path) -> None:
    """The lean path reads the tables a delta wrote (the new model's own, not the old one's)."""
    model = build_model(SCHEMA, CONFIGS["one block, dense arch"])
    store = LocalModelStore(tmp_path / "models")

    exporter = Exporter(store, "int8", retention=None)
    exporter.export_full(model)
    old = load_serving_model(store)
    batch = Featurizer(SCHEMA)(events(8))
    before = old.predict(batch)
    table = next(iter(exporter.base.tables)).key
    with torch.no_grad():
        model.state_dict()[table].add_(0.5)
        model.logit.bias.add_(1.0)
    exporter.export_delta({table: torch.arange(model.sparse.num_rows)}, model)

    new = refresh(old, store)
    assert new.seq == 1
    with torch.inference_mode():
        expected = new.module(batch.sparse, batch.dense)
    assert torch.equal(new.logits(batch), expected)
    assert not torch.equal(new.predict(batch), before)
    assert torch.equal(old.predict(batch), before), "the old model keeps its own weights"


def test_other_methods_run_the_module(tmp_path: Path) -> None:
    model = served(tmp_path, "int8", ModelConfig(method="hashing_trick", method_args={"num_rows": 300}))
    assert model.__dict__["_lean"] is None
    batch = Featurizer(SCHEMA)(events(5))
    with torch.inference_mode():
        expected = torch.sigmoid(model.module(batch.sparse, batch.dense))
    assert torch.equal(model.predict(batch), expected)
    assert model.score(batch).unseen is None
