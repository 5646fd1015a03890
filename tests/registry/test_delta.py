"""Deltas: a full export plus the deltas after it reproduce the next full export exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from embedding import ArtifactError, FeatureBatch, FeatureSchema, Featurizer
from embedding.export import ExportMeta, apply_delta_tensors, read_delta, read_full
from embedding.export.artifact import StoreSource
from embedding.model import DCNModel, ModelConfig, build_model
from registry.exporter import Exporter, export_model
from registry.loading import load_delta, load_serving_model, refresh
from registry.store import LocalModelStore

from .conftest import make_events, slice_batch, train


def touched(model: DCNModel, batch: FeatureBatch) -> dict[str, torch.Tensor]:
    """Rows of each unified block looked up by `batch` (what the trainer tracks between publications)."""
    method = model.sparse
    rows, _ = method.rows(batch.sparse)
    out = {}
    for b in range(method.num_blocks):
        lo = b * method.block_rows
        in_block = rows[(rows >= lo) & (rows < lo + method.block_rows)] - lo
        out[method.table_name(b)] = torch.unique(in_block)
    return out


def _assert_reproduces(store: LocalModelStore, base: str, nxt: str, seqs: list[int]) -> None:
    start, target = read_full(StoreSource(store, base)), read_full(StoreSource(store, nxt))
    tables, params = start.tables, start.params
    for seq in seqs:
        tables, params = apply_delta_tensors(tables, params, read_delta(StoreSource(store, base, seq), start.manifest))
    assert tables.keys() == target.tables.keys()
    for key, table in target.tables.items():
        assert torch.equal(tables[key], table), f"{key}: quantised rows differ"
    assert params.keys() == target.params.keys()
    for key, value in target.params.items():
        assert value.dtype == params[key].dtype and torch.equal(params[key], value), f"{key} differs"


@pytest.fixture
def stream(trained: DCNModel, schema: FeatureSchema) -> tuple[DCNModel, list[FeatureBatch]]:
    fresh = Featurizer(schema)(make_events(600, seed=7, offset=10_000))  # new users and movies too
    return copy.deepcopy(trained), [slice_batch(fresh, 0, 300), slice_batch(fresh, 300, 600)]


def test_full_plus_deltas_equals_next_full(stream, store: LocalModelStore, batch: FeatureBatch) -> None:  # type: ignore[no-untyped-def]
    model, parts = stream
    exporter = Exporter(store, "int8", retention=None)
    base = exporter.export_full(model, ExportMeta(step=12))
    for i, part in enumerate(parts):
        rows = touched(model, part)
        train(model, part, steps=2, size=150)
        delta = exporter.export_delta(rows, model, ExportMeta(step=14 + 2 * i, watermark_ms=1000 + i))
        assert delta.seq == i + 1 and delta.base_version == base.version and not delta.all_rows
        assert 0 < sum(delta.tables.values()) < 4000
    nxt = export_model(model, store, "int8", ExportMeta(step=16))
    _assert_reproduces(store, base.version, nxt.version, [1, 2])

    served = load_serving_model(store, base.version)
    before = served.predict(batch)
    for seq in (1, 2):
        served = served.apply_delta(load_delta(store, base.version, seq, served.manifest))
    assert served.version == f"{base.version}+2" and served.watermark_ms == 1001
    assert torch.equal(served.predict(batch), load_serving_model(store, nxt.version).predict(batch))
    old = load_serving_model(store, base.version)
    assert torch.equal(old.predict(batch), before), "applying a delta must not change the model it started from"


def test_a_missed_row_breaks_the_reproduction(stream, store: LocalModelStore) -> None:  # type: ignore[no-untyped-def]
    model, parts = stream
    exporter = Exporter(store, "int8", retention=None)
    base = exporter.export_full(model)
    rows = touched(model, parts[0])
    train(model, parts[0], steps=2, size=150)
    rows["unified_0"] = rows["unified_0"][1:]
    exporter.export_delta(rows, model)
    nxt = export_model(model, store, "int8")
    with pytest.raises(AssertionError, match="quantised rows differ"):
        _assert_reproduces(store, base.version, nxt.version, [1])


def test_row_values_equal_rows_read_from_state(stream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, parts = stream
    a, b = Exporter(LocalModelStore(tmp_path / "a"), "int4"), Exporter(LocalModelStore(tmp_path / "b"), "int4")
    a.export_full(model)
    b.export_full(model)
    rows = touched(model, parts[0])
    train(model, parts[0], steps=1, size=300)
    a.export_delta(rows, model)
    state = model.state_dict()
    values = {n: state[f"sparse.ebc.embedding_bags.{n}.weight"][ids] for n, ids in rows.items()}
    b.export_delta(rows, (model.schema, model.config, {k: v for k, v in state.items()}), row_values=values)
    assert a.store.read("v0000000001", "rows.safetensors", 1) == b.store.read("v0000000001", "rows.safetensors", 1)


def test_gap_and_foreign_deltas_are_refused(stream, store: LocalModelStore) -> None:  # type: ignore[no-untyped-def]
    model, parts = stream
    exporter = Exporter(store, "int8", retention=None)
    base = exporter.export_full(model)
    for part in parts:
        exporter.export_delta(touched(model, part), model)
    served = load_serving_model(store, base.version)
    with pytest.raises(ArtifactError, match=r"gap.*check: sequence"):
        served.apply_delta(load_delta(store, base.version, 2))
    other = exporter.export_full(model)
    with pytest.raises(ArtifactError, match="check: base version"):
        load_serving_model(store, other.version).apply_delta(load_delta(store, base.version, 1))
    with pytest.raises(ArtifactError, match="no delta 3"):
        load_delta(store, base.version, 3)


def test_refresh_follows_deltas_pointer_and_new_versions(stream, store: LocalModelStore) -> None:  # type: ignore[no-untyped-def]
    model, parts = stream
    exporter = Exporter(store, "fp16", retention=None)
    base = exporter.export_full(model)
    served = load_serving_model(store)
    assert refresh(served, store) is served
    for part in parts:
        exporter.export_delta(touched(model, part), model)
    assert refresh(served, store).version == f"{base.version}+2"
    nxt = exporter.export_full(model)
    assert refresh(served, store).version == nxt.version
    store.rollback(base.version)
    assert refresh(load_serving_model(store), store).version == f"{base.version}+2"


def test_collapsed_method_deltas_carry_every_row(schema: FeatureSchema, batch: FeatureBatch, store) -> None:  # type: ignore[no-untyped-def]
    config = ModelConfig(
        method="mlet", method_args={"inner": "unified", "inner_args": {"num_rows": 500}, "inner_dim": 32}
    )
    model = build_model(schema, config)
    exporter = Exporter(store, "int8", retention=None)
    base = exporter.export_full(model)
    train(model, batch, steps=2)
    delta = exporter.export_delta({}, model)
    assert delta.all_rows and delta.tables == {"sparse.ebc.embedding_bags.unified_0.weight": 500}
    nxt = export_model(model, store, "int8")
    _assert_reproduces(store, base.version, nxt.version, [1])


def test_seen_mask_marks_rows_trained_on(trained: DCNModel, schema: FeatureSchema, batch, store) -> None:  # type: ignore[no-untyped-def]
    from embedding import Event

    exporter = Exporter(store, "int8", retention=None)
    exporter.export_full(trained, seen_rows=touched(trained, batch))
    served = load_serving_model(store)
    assert all(mask.all() for mask in served.seen_mask(batch).values())
    # new users: about half of their rows were never trained on (the rest collide with trained rows)
    new = [Event(event_id=f"n{i}", ts=1, sparse={"user": 10**9 + i}) for i in range(200)]
    unseen = Featurizer(schema)(new)
    mask = served.seen_mask(unseen)
    assert mask["age"].numel() == 0
    assert 0.2 < 1 - mask["user"].float().mean().item() < 0.9
    exporter.export_delta(touched(trained, unseen), trained)
    updated = served.apply_delta(load_delta(store, served.base_version, 1))
    assert updated.seen_mask(unseen)["user"].all()
    assert torch.equal(served.seen_mask(unseen)["user"], mask["user"]), "the old model keeps its own mask"


@pytest.mark.parametrize("variant", ["robe_mux", "qr", "managed_collision"])
def test_deltas_of_other_methods_reach_the_next_full_export(variant: str, schema: FeatureSchema, batch, store) -> None:  # type: ignore[no-untyped-def]
    """Without row tracking the trainer sends every row; non-table tensors (ROBE array, remaps) ride along."""
    from embedding.budget import budget_method_args
    from embedding.export import find_tables

    method, args = budget_method_args(schema, 48 << 10, variants=[variant])[variant]
    model = build_model(schema, ModelConfig(method=method, method_args=args, dense_arch=(), over_arch=(16,)))
    part = slice_batch(batch, 0, 400)
    exporter = Exporter(store, "int8", retention=None)
    base = exporter.export_full(model)
    train(model, part, steps=2, size=200)
    every_row = {t.key: torch.arange(t.rows) for t in find_tables(model.sparse)}
    exporter.export_delta(every_row, (schema, model.config, model.state_dict()))
    nxt = export_model(model, store, "int8")
    _assert_reproduces(store, base.version, nxt.version, [1])
    served = load_serving_model(store, base.version).apply_delta(load_delta(store, base.version, 1))
    assert torch.equal(served.predict(part), load_serving_model(store, nxt.version).predict(part))
