"""Corrupt, incomplete or foreign artifacts are refused with an error naming the file and the check."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from embedding import ArtifactError, FeatureSchema, load_schema
from embedding.export import ExportMeta
from embedding.model import DCNModel
from registry.exporter import Exporter, export_model
from registry.loading import load_delta, load_serving_model
from registry.store import LocalModelStore


@pytest.fixture
def artifact(trained: DCNModel, store: LocalModelStore) -> Path:
    manifest = export_model(trained, store, "int8", ExportMeta(step=1))
    return store.path(manifest.version)


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _rewrite_manifest(artifact: Path, edit: Callable[[dict], None]) -> None:
    """Change the manifest and its checksum consistently (a well-formed manifest saying something else)."""
    doc = orjson.loads((artifact / "manifest.json").read_bytes())
    edit(doc)
    raw = orjson.dumps(doc)
    (artifact / "manifest.json").write_bytes(raw)
    (artifact / "manifest.sha256").write_text(hashlib.sha256(raw).hexdigest())


@pytest.mark.parametrize(
    ("damage", "file", "check"),
    [
        (lambda a: _truncate(a / "tables.safetensors"), "tables.safetensors", "size"),
        (lambda a: _truncate(a / "params.safetensors"), "params.safetensors", "size"),
        (lambda a: _flip(a / "tables.safetensors", 5000), "tables.safetensors", "sha256"),
        (lambda a: _flip(a / "params.safetensors", 200), "params.safetensors", "sha256"),
        (lambda a: _flip(a / "manifest.json", 40), "manifest.json", "manifest sha256"),
        (lambda a: (a / "tables.safetensors").unlink(), "tables.safetensors", "presence"),
        (lambda a: (a / "manifest.sha256").unlink(), "manifest.sha256", "presence"),
        (lambda a: _rewrite_manifest(a, lambda d: d.update(format_version=99)), "manifest.json", "format version"),
        (lambda a: _rewrite_manifest(a, lambda d: d.update(method="nope")), "manifest.json", "method"),
        (lambda a: _rewrite_manifest(a, lambda d: d.update(quantization="int3")), "manifest.json", "manifest fields"),
        (
            lambda a: _rewrite_manifest(a, lambda d: d["feature_schema"].update(embedding_dim=8)),
            "manifest.json",
            "schema fingerprint",
        ),
    ],
)
def test_damaged_artifact_is_refused(
    artifact: Path, store: LocalModelStore, damage: Callable[[Path], None], file: str, check: str
) -> None:
    load_serving_model(store)  # intact: loads
    damage(artifact)
    with pytest.raises(ArtifactError) as info:
        load_serving_model(store)
    message = str(info.value)
    assert file in message and f"(check: {check})" in message, message
    # the same through the artifact directory itself
    with pytest.raises(ArtifactError, match=file):
        load_serving_model(artifact)


def test_artifact_for_another_schema_is_refused(artifact: Path, store: LocalModelStore, schema: FeatureSchema) -> None:
    other = schema.model_copy(update={"sparse": schema.sparse[:-1]})
    with pytest.raises(ArtifactError, match=r"manifest.json: artifact is for schema .*\(check: expected schema\)"):
        load_serving_model(store, expected_schema=other)
    assert (
        load_serving_model(store, expected_schema=load_schema("movielens")).schema.fingerprint() == schema.fingerprint()
    )


def test_damaged_delta_is_refused(trained: DCNModel, store: LocalModelStore) -> None:
    exporter = Exporter(store, "int8", retention=None)
    base = exporter.export_full(trained)
    exporter.export_delta({"unified_0": __import__("torch").arange(10)}, trained)
    rows = store.path(base.version, 1) / "rows.safetensors"
    _flip(rows, 300)
    with pytest.raises(ArtifactError, match=r"rows.safetensors: .*\(check: sha256\)"):
        load_delta(store, base.version, 1)


def test_missing_version_and_empty_store(tmp_path: Path, artifact: Path, store: LocalModelStore) -> None:
    with pytest.raises(ArtifactError, match="holds no versions"):
        load_serving_model(LocalModelStore(tmp_path / "empty"))
    with pytest.raises(ArtifactError, match="no version v0000000009"):
        load_serving_model(store, "v0000000009")
    with pytest.raises(ArtifactError, match="neither an artifact directory"):
        load_serving_model(tmp_path)
