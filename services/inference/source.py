"""Where models come from: the one place that talks to the model store and the loader.

The service sees a `ModelSource`; `StoreRegistry` is the real one over `registry.store` and
`registry.loading` (the loader shared with the exporter, so both sides agree on the artifact
format). Tests hand the app another `ModelSource` to drive swaps precisely.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from embedding.events import FeatureBatch
from embedding.schema import FeatureSchema


@runtime_checkable
class ServingModelLike(Protocol):
    """What the service needs of a loaded model (`embedding.serving.ServingModel`)."""

    version: str
    manifest: Any
    schema: FeatureSchema

    def predict(self, batch: FeatureBatch) -> torch.Tensor: ...


class ModelSource(Protocol):
    """Versions and models of one store."""

    def describe(self) -> str:
        """Where the models come from, for logs and /v1/status."""

    def latest(self) -> str | None:
        """The newest published version, or None when the store has none yet."""

    def load(self, version: str | None) -> ServingModelLike:
        """The full model at `version` (None: the latest); raises ArtifactError when refused."""

    def advance(self, current: ServingModelLike, version: str, kind: str) -> tuple[ServingModelLike, str]:
        """The model at `version`, reached from `current` by deltas where possible.

        Returns the model and how it was reached (`full` or `delta`); raises ArtifactError when an
        artifact is refused (gap in the delta chain, bad checksum, other schema).
        """
