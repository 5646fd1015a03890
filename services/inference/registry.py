"""The real `ModelSource`: the model store of `registry.store` read with `registry.loading`.

Served versions are the store's: `v0000000007` for a full export, `v0000000007+3` once its
deltas 1..3 are applied. The target is the store's serving version (its rollback pointer, else
the newest full version) plus the longest run of contiguous deltas after it, so a missing delta
never stops the service from reaching the ones before it.
"""

from __future__ import annotations

from embedding.errors import ArtifactError
from embedding.schema import FeatureSchema
from embedding.serving import ServingModel
from registry.loading import load_delta, load_serving_model
from registry.store import ModelStore, open_store, version_number


def split_version(version: str) -> tuple[str, int]:
    """`v0000000007+3` -> (`v0000000007`, 3); a full version has seq 0."""
    base, plus, seq = version.partition("+")
    if not plus:
        return base, 0
    if not seq.isdigit():
        raise ArtifactError(f"version {version!r} is not <full version>+<delta seq> (e.g. v0000000007+3)")
    return base, int(seq)


class StoreRegistry:
    def __init__(self, store: ModelStore | str, expected_schema: FeatureSchema | None = None) -> None:
        self._location = store if isinstance(store, str) else store.uri
        self._store = store if isinstance(store, ModelStore) else None
        self.expected_schema = expected_schema

    @property
    def store(self) -> ModelStore:
        """Opened on first use, so a store that is not there yet (read-only volume, trainer not started)
        does not stop the service from starting: it reports not ready and retries on every poll."""
        if self._store is None:
            self._store = open_store(self._location)
        return self._store

    def describe(self) -> str:
        return self._store.uri if self._store is not None else self._location

    def latest(self) -> str | None:
        base = self.store.serving_version()
        if base is None:
            return None
        return self._with_deltas(base)

    def _with_deltas(self, base: str) -> str:
        seq = 0
        for available in self.store.deltas(base):
            if available != seq + 1:
                break
            seq = available
        return base if seq == 0 else f"{base}+{seq}"

    def fallbacks(self, refused: str) -> list[str]:
        """What to serve instead of `refused`, best first: its full version without the deltas (when a
        delta was refused), then every older full version with its contiguous deltas, newest first."""
        base, seq = split_version(refused)
        older = sorted((v for v in self.store.versions() if version_number(v) < version_number(base)), reverse=True)
        return ([base] if seq else []) + [self._with_deltas(v) for v in older]

    def load(self, version: str | None) -> ServingModel:
        base, seq = split_version(version) if version else (None, 0)
        model = load_serving_model(self.store, base, expected_schema=self.expected_schema)
        return self._apply(model, seq)

    def advance(self, current: ServingModel, version: str, kind: str) -> tuple[ServingModel, str]:
        base, seq = split_version(version)
        if isinstance(current, ServingModel) and current.base_version == base and seq > current.seq:
            return self._apply(current, seq), "delta"
        return self.load(version), "full"

    def _apply(self, model: ServingModel, seq: int) -> ServingModel:
        for next_seq in range(model.seq + 1, seq + 1):
            model = model.apply_delta(load_delta(self.store, model.base_version, next_seq, model.manifest))
        return model
