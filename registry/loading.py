"""Load served models from a model store: the serving version in full, its deltas, and catching up.

    model = load_serving_model(store, expected_schema=schema)   # the store's serving version
    model = model.apply_delta(load_delta(store, model.base_version, model.seq + 1))
    model = refresh(model, store)                               # whatever the store serves now
"""

from __future__ import annotations

from pathlib import Path

from core.logs import get_logger, log_event
from embedding.errors import ArtifactError
from embedding.export.artifact import DeltaArtifact, DirSource, Source, StoreSource, read_delta
from embedding.export.manifest import MANIFEST, Manifest
from embedding.schema import FeatureSchema
from embedding.serving.model import ServingModel, model_from_source
from registry.store import LocalModelStore, ModelStore, open_store

logger = get_logger("serving")


def _source(store_or_path: ModelStore | str | Path, version: str | None) -> Source:
    if isinstance(store_or_path, ModelStore):
        store: ModelStore = store_or_path
    elif str(store_or_path).startswith(("redis://", "rediss://", "unix://")):
        store = open_store(str(store_or_path))
    else:
        path = Path(store_or_path)
        if (path / MANIFEST).exists():
            if version is not None and path.name != version:
                raise ArtifactError(f"{path} is one artifact ({path.name}); cannot pick version {version}")
            return DirSource(path)
        if not (path / "versions").is_dir():
            raise ArtifactError(f"{path}: neither an artifact directory ({MANIFEST}) nor a model store (versions/)")
        store = LocalModelStore(path)
    version = version or store.serving_version()
    if version is None:
        raise ArtifactError(f"{store.uri}: the model store holds no versions yet")
    if version not in store.versions():
        raise ArtifactError(f"{store.uri}: no version {version}; it holds {store.versions()}")
    return StoreSource(store, version)


def load_serving_model(
    store_or_path: ModelStore | str | Path,
    version: str | None = None,
    expected_schema: FeatureSchema | None = None,
) -> ServingModel:
    """Verify and load a full artifact: a store (its serving version unless `version` is given), a
    store directory or URL, or one artifact directory. Every checksum is verified before anything
    is built; ArtifactError names the file and the failed check."""
    return model_from_source(_source(store_or_path, version), expected_schema)


def load_delta(
    store_or_path: ModelStore | str | Path, version: str, seq: int, base: Manifest | None = None
) -> DeltaArtifact:
    """Verify and read delta `seq` of `version` from a store (or a store directory / URL)."""
    store = store_or_path if isinstance(store_or_path, ModelStore) else open_store(str(store_or_path))
    if seq not in store.deltas(version):
        raise ArtifactError(
            f"{store.uri}: no delta {seq} of {version}; it has {store.deltas(version)} (check: presence)"
        )
    return read_delta(StoreSource(store, version, seq), base)


def refresh(model: ServingModel, store: ModelStore) -> ServingModel:
    """Catch `model` up with `store`: itself when current; the deltas that follow on (stopping at a
    gap or a refused delta, which the next full export repairs); or the store's serving version
    loaded in full when it changed (a new export, a rollback)."""
    target = store.serving_version()
    if target is None:
        return model
    if target == model.base_version:
        for seq in store.deltas(target):
            if seq <= model.seq:
                continue
            try:
                model = model.apply_delta(load_delta(store, target, seq, model.manifest))
            except ArtifactError as exc:
                log_event(logger, "delta refused", version=target, seq=seq, error=str(exc))
                break
        return model
    return load_serving_model(store, target, expected_schema=model.schema)
