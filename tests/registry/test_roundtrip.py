"""Export -> verify -> serve round trips: predictions of the served artifact against the trained model."""

from __future__ import annotations

import pytest
import torch

from embedding import FeatureBatch, FeatureSchema, Featurizer
from embedding.budget import budget_method_args
from embedding.export import ExportMeta, prepare, read_full
from embedding.export.artifact import StoreSource
from embedding.model import DCNModel, ModelConfig, build_model
from registry.exporter import export_model
from registry.loading import load_serving_model
from registry.store import LocalModelStore

from .conftest import make_events, slice_batch, train


def _fp32_probs(model: DCNModel, batch: FeatureBatch) -> torch.Tensor:
    with torch.no_grad():
        return torch.sigmoid(model(batch.sparse, batch.dense))


def test_trained_model_is_not_trivial(trained: DCNModel, batch: FeatureBatch) -> None:
    probs = _fp32_probs(trained, batch)
    assert probs.std() > 0.02, "the fixture should have learnt something"


@pytest.mark.parametrize(
    ("quantization", "tolerance"), [("fp32", 1e-6), ("fp16", 1e-3), ("int8", 1e-2), ("int4", 5e-2)]
)
def test_served_predictions_match_fp32_model(
    trained: DCNModel, batch: FeatureBatch, store: LocalModelStore, quantization: str, tolerance: float
) -> None:
    meta = ExportMeta(step=12, offsets={"events": {0: 1000}}, watermark_ms=1_700_000_000_999, metrics={"auc": 0.7})
    manifest = export_model(trained, store, quantization, meta)
    served = load_serving_model(store, expected_schema=trained.schema)
    assert served.version == manifest.version
    assert served.manifest.quantization == quantization
    assert served.watermark_ms == 1_700_000_000_999
    delta = (served.predict(batch) - _fp32_probs(trained, batch)).abs().max().item()
    assert delta < tolerance, f"{quantization}: max |dp| = {delta}"
    if quantization == "fp32":
        assert delta < 1e-6


def test_manifest_describes_the_model(trained: DCNModel, store: LocalModelStore) -> None:
    meta = ExportMeta(step=5, offsets={"events": {0: 10, 1: 20}}, watermark_ms=123, metrics={"auc": 0.71})
    manifest = export_model(trained, store, "int8", meta)
    doc = manifest.model_dump(mode="json")
    assert doc["offsets"] == {"events": {"0": 10, "1": 20}}
    assert doc["method"] == "unified" and doc["trained_method"] == "unified"
    assert doc["method_config"]["num_rows"] == 4000
    assert doc["schema_fingerprint"] == trained.schema.fingerprint()
    assert doc["seeds"] == {"model": 0, "method": 3}
    assert doc["widths"]["user"] == 16
    assert sorted(doc["files"]) == ["params.safetensors", "tables.safetensors"]
    assert [t["key"] for t in doc["tables"]] == [
        "sparse.ebc.embedding_bags.unified_0.weight",
        "sparse.ebc.embedding_bags.unified_1.weight",
    ]
    artifact = read_full(StoreSource(store, manifest.version))
    assert all(v.dtype == torch.float32 for k, v in artifact.params.items() if not k.startswith("sparse."))
    assert artifact.tables["sparse.ebc.embedding_bags.unified_0.weight"].dtype == torch.uint8


def test_state_dict_source_equals_module_source(trained: DCNModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a, b = LocalModelStore(tmp_path / "a"), LocalModelStore(tmp_path / "b")
    export_model(trained, a, "int8")
    export_model((trained.schema, trained.config, trained.state_dict()), b, "int8")
    for name in ("tables.safetensors", "params.safetensors"):
        assert a.read("v0000000001", name) == b.read("v0000000001", name)


def test_state_dict_of_another_model_is_refused(trained: DCNModel, schema: FeatureSchema) -> None:
    state = dict(trained.state_dict())
    state.pop("logit.bias")
    with pytest.raises(ValueError, match="missing"):
        prepare((schema, trained.config, state))
    other = trained.config.model_copy(update={"method_args": {"num_rows": 10, "num_blocks": 2}})
    with pytest.raises(ValueError, match="shape"):
        prepare((schema, other, trained.state_dict()))


def test_export_keeps_the_callers_random_stream(trained: DCNModel, store: LocalModelStore) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    export_model((trained.schema, trained.config, trained.state_dict()), store, "int8")
    assert torch.equal(torch.rand(3), expected)


def test_mlet_collapses_to_its_inner_method(schema: FeatureSchema, batch: FeatureBatch, store: LocalModelStore) -> None:
    config = ModelConfig(
        method="mlet",
        method_args={"inner": "unified", "inner_args": {"num_rows": 2000, "num_blocks": 2}, "inner_dim": 64},
    )
    model = build_model(schema, config)
    train(model, batch, steps=6)
    expected = _fp32_probs(model, batch)
    manifest = export_model((schema, config, model.state_dict()), store, "fp32")
    assert manifest.method == "unified" and manifest.trained_method == "mlet"
    assert manifest.tables[0].dim == schema.embedding_dim
    served = load_serving_model(store)
    assert (served.predict(batch) - expected).abs().max().item() < 1e-5
    # the collapsed table is what the wrapped class serves, so int8 stays within the usual bound
    export_model(model, store, "int8")
    assert (load_serving_model(store).predict(batch) - expected).abs().max().item() < 1e-2


VARIANTS = [
    "hashing_trick",
    "hash_embedding",
    "hash_embedding_mux",
    "hashednet_mux",
    "robe",
    "robe_mux",
    "qr",
    "qr_mux",
    "pq",
    "path_qr",
    "managed_collision",
    "mlet_hashing_trick",
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_method_serves_what_it_trained(
    variant: str, schema: FeatureSchema, batch: FeatureBatch, store: LocalModelStore
) -> None:
    method, args = budget_method_args(schema, 48 << 10, variants=[variant])[variant]
    model = build_model(schema, ModelConfig(method=method, method_args=args, dense_arch=(), over_arch=(16,)))
    part = slice_batch(batch, 0, 400)
    train(model, part, steps=2, size=200)
    expected = _fp32_probs(model, part)
    export_model(model, store, "fp32")
    served = load_serving_model(store, expected_schema=schema)
    assert (served.predict(part) - expected).abs().max().item() < 1e-5
    export_model(model, store, "int8")
    assert (load_serving_model(store).predict(part) - expected).abs().max().item() < 2e-2


def test_collisionless_serves_what_it_trained(
    schema: FeatureSchema, batch: FeatureBatch, store: LocalModelStore
) -> None:
    from embedding.methods import Collisionless

    sparse = Collisionless.fit(schema, [batch.sparse])
    config = ModelConfig(method="collisionless", method_args=sparse.config())
    model = DCNModel(schema, sparse, config)
    train(model, batch, steps=3)
    export_model(model, store, "int8")
    served = load_serving_model(store)
    assert (served.predict(batch) - _fp32_probs(model, batch)).abs().max().item() < 1e-2


def test_int4_keeps_tables_it_cannot_pack_in_int8(schema: FeatureSchema, batch: FeatureBatch, store) -> None:  # type: ignore[no-untyped-def]
    """fbgemm packs int4 rows only for widths divisible by 4: a 10-wide table stays int8 (a 6-wide one
    fp16: int8 would not be smaller), an 8-wide one is int4."""
    for dim, expected in ((10, "int8"), (6, "fp16"), (8, "int4")):
        narrow = schema.model_copy(update={"embedding_dim": dim})
        model = build_model(narrow, ModelConfig(method_args={"num_rows": 500}))
        train(model, Featurizer(narrow)(make_events(200)), steps=1)
        manifest = export_model(model, store, "int4")
        assert manifest.quantization == "int4" and [t.quantization for t in manifest.tables] == [expected]
        served = load_serving_model(store)
        small = Featurizer(narrow)(make_events(200))
        assert (served.predict(small) - _fp32_probs(model, small)).abs().max().item() < 5e-2


def test_robe_artifacts_record_their_hash_version(schema: FeatureSchema, batch: FeatureBatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An artifact says how it hashes even when the trainer's arguments left hash_version at its
    default; one without the field and with the array as a table is version 2 and serves; one with
    the flat array of the code before the tables may be version 1 and is refused."""
    from embedding.errors import ArtifactError
    from embedding.export import full_artifact
    from embedding.export.artifact import DirSource, full_files, save_tensors
    from embedding.export.manifest import PARAMS, TABLES
    from embedding.serving import model_from_source

    config = ModelConfig(method="robe", method_args={"size": 5000, "block": 4}, dense_arch=(), over_arch=(16,))
    model = build_model(schema, config)
    manifest, files = full_artifact(model, "v0000000001", "fp32")
    assert manifest.method_config["hash_version"] == 2

    def write(name: str, fields: dict, payloads: dict) -> DirSource:  # type: ignore[type-arg]
        _, out = full_files(fields, payloads)
        (tmp_path / name).mkdir()
        for file, data in out.items():
            (tmp_path / name / file).write_bytes(data)
        return DirSource(tmp_path / name)

    fields = manifest.model_dump(exclude={"files"})
    unrecorded = {**fields, "method_config": config.method_args, "config": config}
    payloads = {n: files[n] for n in (TABLES, PARAMS)}
    served = model_from_source(write("v2", unrecorded, payloads))
    assert (served.predict(batch) - _fp32_probs(model, batch)).abs().max().item() < 1e-6

    key = manifest.tables[0].key
    state = {k: v for k, v in model.state_dict().items() if k != key}
    flat = {**state, "sparse.weight": model.sparse.array.detach().clone()}
    old = {**unrecorded, "tables": []}
    with pytest.raises(ArtifactError, match="flat tensor .hash_version unrecorded.*retrain"):
        model_from_source(write("v1", old, {TABLES: save_tensors({}), PARAMS: save_tensors(flat)}))
