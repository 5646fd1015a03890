"""Publish exports: write a trained model as a new version of a model store, its deltas in between,
and announce each one on Redis.

    manifest = export_model(model, store, "int8", ExportMeta(step=..., offsets=..., watermark_ms=...))
    exporter = Exporter(store, "int8", publisher=Publisher(redis_url), delta_interval_s=5)
    exporter.export_full((schema, config, state_dict), meta)              # version v..., seq 0
    if exporter.delta_due():
        exporter.export_delta({"unified_0": touched_row_ids}, (schema, config, state_dict), meta)

The artifact's files come from the library (`embedding.export.build`); this module owns where they
go and who hears of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import torch

from core.logs import get_logger, log_event
from embedding.errors import ArtifactError
from embedding.export.artifact import StoreSource, read_manifest
from embedding.export.build import ModelSource, SparseDtype, delta_artifact, full_artifact
from embedding.export.manifest import DeltaManifest, ExportMeta, Manifest
from embedding.export.quantize import check_quantization
from registry.notify import Notification, Publisher
from registry.store import ModelStore

logger = get_logger("export")


def export_model(
    source: ModelSource,
    store: ModelStore,
    quantization: str = "int8",
    meta: ExportMeta | None = None,
    *,
    seen_rows: Mapping[str, torch.Tensor] | None = None,
    sparse_dtype: SparseDtype | None = None,
    publisher: Publisher | None = None,
    retention: int | None = None,
) -> Manifest:
    """Write a full artifact as a new version of `store`; publish it and apply retention when asked
    (arguments as `embedding.export.build.full_artifact`)."""
    meta = meta or ExportMeta()
    check_quantization(quantization)
    started = time.perf_counter()
    version = store.allocate_version()
    manifest, files = full_artifact(
        source, version, quantization, meta, seen_rows=seen_rows, sparse_dtype=sparse_dtype
    )
    store.write_version(version, files)
    log_event(
        logger,
        "export full",
        version=version,
        method=manifest.method,
        quantization=quantization,
        bytes=sum(len(d) for d in files.values()),
        seconds=round(time.perf_counter() - started, 3),
        store=store.uri,
    )
    if retention is not None:
        deleted = store.retain(retention)
        if deleted:
            log_event(logger, "retention", deleted=",".join(deleted), keep=retention)
    if publisher is not None:
        _announce(
            publisher,
            Notification(
                version=version,
                kind="full",
                base_version=version,
                serving=store.serving_version(),
                store=store.uri,
                watermark_ms=meta.watermark_ms,
            ),
        )
    return manifest


def _announce(publisher: Publisher, notification: Notification) -> None:
    """Publish, but never fail an export for it: the artifact is in the store, and services also
    poll the store, so a missed notification only delays the swap until their next poll."""
    try:
        publisher.publish(notification)
    except Exception as exc:  # noqa: BLE001  (redis.RedisError and socket errors alike)
        log_event(logger, "publish failed", logging.WARNING, version=notification.version, error=str(exc))


class Exporter:
    """Full exports plus numbered deltas in between, for one trainer.

    After `export_full` (sequence 0) each `export_delta` publishes the rows updated since the
    previous publication as delta 1, 2, ... of that version. The trainer passes the rows it
    touched since the last publication (`touched_rows`: table key or name -> row ids); for
    collapsed methods every row is carried, because the shared factor changes them all."""

    def __init__(
        self,
        store: ModelStore,
        quantization: str = "int8",
        *,
        publisher: Publisher | None = None,
        retention: int | None = 5,
        delta_interval_s: float = 5.0,
        sparse_dtype: SparseDtype | None = None,
    ) -> None:
        self.store = store
        self.quantization = check_quantization(quantization)
        self.publisher = publisher
        self.retention = retention
        self.delta_interval_s = delta_interval_s
        self.sparse_dtype = sparse_dtype
        self.base: Manifest | None = None
        self.seq = 0
        self._last_publication = 0.0

    @property
    def base_version(self) -> str | None:
        return self.base.version if self.base else None

    def delta_due(self, now: float | None = None) -> bool:
        """True when a full export exists and `delta_interval_s` passed since the last publication."""
        now = time.monotonic() if now is None else now
        return self.base is not None and now - self._last_publication >= self.delta_interval_s

    def export_full(
        self, source: ModelSource, meta: ExportMeta | None = None, seen_rows: Mapping[str, torch.Tensor] | None = None
    ) -> Manifest:
        self.base = export_model(
            source,
            self.store,
            self.quantization,
            meta,
            seen_rows=seen_rows,
            sparse_dtype=self.sparse_dtype,
            publisher=self.publisher,
            retention=self.retention,
        )
        self.seq = 0
        self._last_publication = time.monotonic()
        return self.base

    def export_delta(
        self,
        touched_rows: Mapping[str, torch.Tensor],
        source: ModelSource,
        meta: ExportMeta | None = None,
        row_values: Mapping[str, torch.Tensor] | None = None,
    ) -> DeltaManifest:
        if self.base is None:
            raise ArtifactError("no full export yet: a delta needs a base version (call export_full first)")
        delta = self.publish_delta(self.base.version, self.seq + 1, touched_rows, source, meta, row_values)
        self.seq = delta.seq
        self._last_publication = time.monotonic()
        return delta

    def publish_delta(
        self,
        base_version: str,
        seq: int,
        touched_rows: Mapping[str, torch.Tensor],
        source: ModelSource,
        meta: ExportMeta | None = None,
        row_values: Mapping[str, torch.Tensor] | None = None,
    ) -> DeltaManifest:
        """Write and announce delta `seq` of `base_version` (see `embedding.export.build.delta_artifact`)."""
        meta = meta or ExportMeta()
        base = self.base if self.base is not None and self.base.version == base_version else None
        if base is None:
            base = read_manifest(StoreSource(self.store, base_version))
        manifest, files = delta_artifact(base, seq, touched_rows, source, meta, row_values)
        self.store.write_delta(base_version, seq, files)
        log_event(
            logger,
            "export delta",
            version=base_version,
            seq=seq,
            rows=sum(manifest.tables.values()),
            bytes=sum(len(d) for d in files.values()),
        )
        if self.publisher is not None:
            _announce(
                self.publisher,
                Notification(
                    version=f"{base_version}+{seq}",
                    kind="delta",
                    base_version=base_version,
                    seq=seq,
                    serving=self.store.serving_version(),
                    store=self.store.uri,
                    watermark_ms=meta.watermark_ms,
                ),
            )
        return manifest
