"""The served model and its atomic swap.

Readers take `holder.current` once per request and keep that reference to the end, so a swap
(one attribute assignment) never disturbs a request in flight: it finishes on the model it
started with, and the old model is freed when its last request lets go of it. Loads and swaps
are serialised by a lock that readers never take.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from core.logs import get_logger, log_event
from embedding.errors import ArtifactError, SchemaError
from embedding.schema import FeatureSchema
from embedding.serving.featurize import ServingFeaturizer
from services.inference.metrics import ServeMetrics
from services.inference.source import ModelSource, ServingModelLike

logger = get_logger("serve.model")


MAX_REFUSED = 64


class LoadFailed(Exception):
    """A version was refused; the model served before keeps serving. `reason` is the metric label."""

    def __init__(self, version: str | None, reason: str, cause: BaseException) -> None:
        super().__init__(f"model version {version!r} refused ({reason}): {cause}")
        self.version = version
        self.reason = reason
        self.cause = cause


class NothingToServe(Exception):
    """The store holds no model yet, or there is nothing to roll back to."""


_CHECK = re.compile(r"\(check: (?P<check>[^)]+)\)")
# The loader names the failed check in its messages ("... (check: sha256)"); the metric gets a few labels.
_REASON_OF_CHECK = {
    "sha256": "checksum",
    "manifest sha256": "checksum",
    "size": "checksum",
    "sequence": "gap",
    "base version": "gap",
    "presence": "missing",
    "expected schema": "schema",
    "schema fingerprint": "schema",
    "feature schema": "schema",
    "schema_fingerprint": "schema",
}


def failure_reason(exc: BaseException) -> str:
    """One of `metrics.FAILURE_REASONS`, the label of `unirec_serve_failed_loads_total{reason}`."""
    if isinstance(exc, SchemaError):
        return "schema"
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if isinstance(exc, ArtifactError):
        match = _CHECK.search(str(exc))
        if match is None:
            return "format"
        return _REASON_OF_CHECK.get(match.group("check"), "format")
    return "error"


_TRAINING_FIELDS = ("step", "metrics", "created_at", "watermark_ms", "method", "trained_method", "quantization")


def _as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return dict(obj)


@dataclass(frozen=True, eq=False)
class Served:
    """One loaded model with what every request needs precomputed."""

    model: ServingModelLike
    featurizer: ServingFeaturizer
    kind: str
    loaded_at: float
    reject_missing: tuple[str, ...]
    reject_unknown: bool
    watermark_ms: int | None
    created_at: Any
    training: dict[str, Any] = field(default_factory=dict)
    """Figures for the status page: the manifest's step, progressive metrics, ... (the last delta's when newer)."""

    @property
    def version(self) -> str:
        return self.model.version

    def freshness_s(self, now: float | None = None) -> float | None:
        """Seconds between now and the newest event time the model was trained on."""
        if self.watermark_ms is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.watermark_ms / 1000.0)

    @classmethod
    def wrap(cls, model: ServingModelLike, kind: str, featurizer: ServingFeaturizer | None = None) -> Served:
        """`featurizer`: the previous model's, kept when the schema is the same (and its remembered fingerprints)."""
        schema = model.schema
        if featurizer is None or featurizer.schema.fingerprint() != schema.fingerprint():
            featurizer = ServingFeaturizer(schema)
        manifest = _as_dict(model.manifest)
        delta = _as_dict(getattr(model, "delta", None))
        training = {k: manifest[k] for k in _TRAINING_FIELDS if k in manifest}
        if delta:
            training.update({k: delta[k] for k in _TRAINING_FIELDS if k in delta})
            training["delta_seq"] = delta.get("seq")
            training["base_created_at"] = manifest.get("created_at")
        watermark = getattr(model, "watermark_ms", None)
        if watermark is None:
            watermark = training.get("watermark_ms")
        return cls(
            model=model,
            featurizer=featurizer,
            kind=kind,
            loaded_at=time.time(),
            reject_missing=tuple(f.name for f in schema.sparse if f.on_missing == "reject"),
            reject_unknown=schema.unknown_features == "reject",
            watermark_ms=int(watermark) if watermark is not None else None,
            created_at=training.get("created_at"),
            training=training,
        )


def _same_base(version: str, target: str) -> bool:
    """`v7+2` -> `v7+3`: the move is deltas on the served full version (the store's `<full>+<seq>` names)."""
    return version.partition("+")[0] == target.partition("+")[0]


class ModelHolder:
    def __init__(
        self,
        source: ModelSource,
        metrics: ServeMetrics,
        expected_schema: FeatureSchema | None = None,
        keep_versions: int = 3,
    ) -> None:
        self.source = source
        self.metrics = metrics
        self.expected_schema = expected_schema
        self._current: Served | None = None
        self._history: deque[Served] = deque(maxlen=keep_versions)
        self._lock = threading.Lock()
        self._refused: dict[str, str] = {}
        self.pinned = False
        """After a rollback the follower stops moving forward until an explicit reload."""
        self.delta_runner: Callable[[Callable[[], Served]], Served] | None = None
        """Runs the follower's delta steps (see `follow`); None runs them on the calling thread."""

    @property
    def current(self) -> Served | None:
        """The model to use for one request (hold on to it; do not read this twice)."""
        return self._current

    @property
    def history(self) -> list[str]:
        """Versions available to roll back to, newest first."""
        return [s.version for s in self._history]

    @property
    def refused(self) -> dict[str, str]:
        """Versions refused since start, with the reason (not retried automatically)."""
        return dict(self._refused)

    # -- loading ---------------------------------------------------------------------------------
    def follow(self, version: str | None = None, kind: str = "auto") -> Served | None:
        """Move to `version` (None: the store's latest) unless pinned, already there or refused before.

        What the follower calls on each notification and poll. Failures are counted and logged,
        never raised: the current model keeps serving.
        """
        if self.pinned:
            return self._current
        try:
            target = version or self.source.latest()
        except Exception as exc:  # store unreachable: nothing to do until the next poll
            log_event(logger, "store_unreachable", logging.WARNING, store=self.source.describe(), error=str(exc))
            return self._current
        if target is None or target in self._refused:
            return self._current
        current = self._current
        if current is not None and current.version == target:
            return current
        try:
            if self.delta_runner is not None and current is not None and _same_base(current.version, target):
                # A delta is a few ms of Python and small torch ops. On another thread it holds the GIL
                # in 5 ms slices against the scoring loop, whose every torch op hands the GIL over:
                # requests stalled ~400 ms per delta. Run there, it costs the loop those few ms once.
                return self.delta_runner(lambda: self.load(target, kind))
            return self.load(target, kind)
        except LoadFailed:
            return self._current

    def load(self, version: str | None = None, kind: str = "auto", *, unpin: bool = False) -> Served:
        """Load `version` (None: latest) and swap to it; raises LoadFailed / NothingToServe, counting the failure."""
        with self._lock:
            try:
                target = version or self.source.latest()
            except Exception as exc:
                raise NothingToServe(f"the model store {self.source.describe()} cannot be read: {exc}") from exc
            if target is None:
                raise NothingToServe(f"the model store {self.source.describe()} holds no model yet")
            current = self._current
            if current is not None and current.version == target:
                self.pinned = self.pinned and not unpin
                return current
            started = time.perf_counter()
            model, how = self._obtain(current, target, kind)
            served = Served.wrap(model, how, current.featurizer if current is not None else None)
            self._swap(served)
            if unpin:
                self.pinned = False
            log_event(
                logger, "model_swapped", version=served.version, kind=how,
                previous=current.version if current else None, load_s=round(time.perf_counter() - started, 3),
            )  # fmt: skip
            return served

    def _obtain(self, current: Served | None, target: str, kind: str) -> tuple[ServingModelLike, str]:
        """The model at `target`: by deltas from `current` when `kind` is `delta` or `auto`, else in full.

        A delta refused for a gap in the chain falls back to a full load (the store can rebuild the
        version from its base); any other refusal is final. Every refusal is counted once.
        """
        if current is not None and kind in ("delta", "auto"):
            try:
                model, how = self.source.advance(current.model, target, kind)
                self._check(model, target)
                return model, how
            except Exception as exc:
                reason = failure_reason(exc)
                self.metrics.failed_loads.labels(reason=reason).inc()
                if reason != "gap":
                    self._refuse(target, reason, exc)
                log_event(logger, "delta_gap_full_load", logging.WARNING, version=target, error=str(exc))
        try:
            model = self.source.load(target)
            self._check(model, target)
            return model, "full"
        except Exception as exc:
            reason = failure_reason(exc)
            self.metrics.failed_loads.labels(reason=reason).inc()
            self._refuse(target, reason, exc)

    def _refuse(self, target: str, reason: str, exc: BaseException) -> NoReturn:
        self._forget_refusal(target)
        self._refused[target] = reason
        self.metrics.refused_versions.labels(version=target, reason=reason).set(1)
        while len(self._refused) > MAX_REFUSED:  # admin reloads of made-up versions must not grow it forever
            self._forget_refusal(next(iter(self._refused)))
        log_event(logger, "load_refused", logging.ERROR, version=target, reason=reason, error=str(exc))
        raise LoadFailed(target, reason, exc) from exc

    def _check(self, model: ServingModelLike, target: str) -> None:
        if model.version != target:
            raise ArtifactError(f"asked the store for version {target!r}, got a model of version {model.version!r}")
        if self.expected_schema is not None and model.schema.fingerprint() != self.expected_schema.fingerprint():
            raise SchemaError(
                f"model {model.version!r} has feature schema {model.schema.name!r} "
                f"({model.schema.fingerprint()[:12]}), expected {self.expected_schema.name!r} "
                f"({self.expected_schema.fingerprint()[:12]})"
            )

    def _swap(self, served: Served, kind: str | None = None) -> None:
        previous = self._current
        if previous is not None:
            self._history.appendleft(previous)
        self._current = served  # the swap: one reference assignment
        self._forget_refusal(served.version)
        self.metrics.swaps.labels(kind=kind or served.kind).inc()
        self.metrics.served(served.version, served.watermark_ms, served.model.schema.sparse_names)

    def _forget_refusal(self, version: str) -> None:
        reason = self._refused.pop(version, None)
        if reason is not None:
            self.metrics.refused_versions.remove(version, reason)

    def start(self) -> Served:
        """The first load: the newest version that verifies.

        When the newest is refused (corrupt, wrong schema), older versions are tried, newest first, so a
        replica starting next to a bad export still becomes ready. The refused version stays refused
        (in /v1/model and /metrics) and the follower moves on with the next export.
        """
        try:
            return self.load()
        except LoadFailed as refused:
            fallbacks = getattr(self.source, "fallbacks", None)
            if fallbacks is None or refused.version is None:
                raise
            for version in fallbacks(refused.version):
                try:
                    served = self.load(version)
                except LoadFailed:
                    continue
                log_event(
                    logger, "fell_back", logging.WARNING, version=served.version, refused=refused.version,
                    reason=refused.reason,
                )  # fmt: skip
                return served
            raise

    def rollback(self) -> Served:
        """Serve the previous model again and pin it (the follower stops until `load(..., unpin=True)`)."""
        with self._lock:
            if not self._history:
                raise NothingToServe("no previous model to roll back to")
            previous = self._history.popleft()
            current = self._current
            self._current = previous
            self.pinned = True
            self.metrics.swaps.labels(kind="rollback").inc()
            self.metrics.served(previous.version, previous.watermark_ms, previous.model.schema.sparse_names)
            log_event(
                logger, "model_rolled_back", version=previous.version, previous=current.version if current else None
            )
            return previous
