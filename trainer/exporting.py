"""Export scheduling inside the trainer: full artifacts every `export_every_s`, deltas in between.

Every rank takes part (gathering a sharded state dict is collective); rank 0 writes and publishes.
Rows touched by training are tracked per table on each rank as a byte mask and OR-ed across ranks
at publication time, so a delta carries exactly the rows updated since the previous publication
(methods without row tracking send all rows of their tables).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor

from core.logs import get_logger, log_event
from embedding.export import ExportMeta, Manifest, find_tables
from embedding.methods import UnifiedEmbedding
from embedding.model import DCNModel, ModelConfig, build_model
from embedding.schema import FeatureSchema
from registry.exporter import Exporter
from registry.notify import Publisher
from registry.settings import RegistrySettings
from registry.store import open_store
from trainer.distributed import DistContext
from trainer.settings import TrainerSettings
from trainer.telemetry import TrainerMetrics

log = get_logger("trainer.export")


def gather_state(model: torch.nn.Module, ctx: DistContext) -> dict[str, torch.Tensor]:
    """The full, unsharded state dict on rank 0 (collective; other ranks get an empty dict)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if isinstance(value, ShardedTensor):
            full = torch.empty(value.size(), dtype=value.dtype) if ctx.is_leader else None
            value.gather(dst=0, out=full)
            if ctx.is_leader:
                out[key] = full  # type: ignore[assignment]
        elif ctx.is_leader:
            out[key] = value.detach().cpu()
    return out


def build_exporter(settings: TrainerSettings, quantization: str | None = None) -> Exporter:
    """The exporter of a trainer: store, retention and channel from the registry's settings
    (`UNIREC_MODEL_*`), quantisation and delta interval from the trainer's (`UNIREC_TRAINER_*`)."""
    registry = RegistrySettings(home=settings.home, redis_url=settings.redis_url)
    return Exporter(
        open_store(registry.store, home=registry.home),
        quantization or settings.quantization,
        publisher=Publisher(registry.redis_url, registry.channel, registry.latest_key),
        retention=registry.retention,
        delta_interval_s=settings.delta_every_s,
    )


class ExportScheduler:
    def __init__(
        self,
        settings: TrainerSettings,
        ctx: DistContext,
        schema: FeatureSchema,
        config: ModelConfig,
        model: torch.nn.Module,
        metrics: TrainerMetrics,
    ) -> None:
        self.settings = settings
        self.ctx = ctx
        self.schema = schema
        self.config = config
        self.model = model
        self.metrics = metrics
        layout: DCNModel = build_model(schema, config, device="meta")
        self.tables = {t.key: t.rows for t in find_tables(layout.sparse)}
        inner = getattr(model, "module", model)
        self.unified: UnifiedEmbedding | None = inner.sparse if isinstance(inner.sparse, UnifiedEmbedding) else None
        self.touched = {key: torch.zeros(rows, dtype=torch.uint8) for key, rows in self.tables.items()}
        self.seen = {key: torch.zeros(rows, dtype=torch.uint8) for key, rows in self.tables.items()}
        self.exporter: Exporter | None = None
        if ctx.is_leader:
            self.exporter = build_exporter(settings)
            log_event(log, "exporter", store=self.exporter.store.uri, quantization=settings.quantization)
        now = time.monotonic()
        self._last_full = now - settings.export_every_s + min(settings.export_every_s, 5.0)
        self._last_delta = now

    @property
    def enabled(self) -> bool:
        return self.settings.export_every_s > 0

    def mark(self, rows: torch.Tensor) -> None:
        """Mark the logical rows of the unified table a batch updates (from `UnifiedEmbedding.rows`)."""
        if self.unified is None:
            return
        # numpy on views of the masks: a handful of array ops instead of ~10 small torch ops a batch
        logical = rows.detach().cpu().numpy()
        starts = self.unified.starts
        block = np.searchsorted(starts[1:], logical, side="right") if len(starts) > 1 else None
        for b, start in enumerate(starts):
            key = f"sparse.ebc.embedding_bags.{UnifiedEmbedding.table_name(b)}.weight"
            mask = self.touched[key].numpy()
            mask[(logical if block is None else logical[block == b]) - start] = 1

    def decide(self) -> tuple[bool, bool]:
        """(full due, delta due) by the leader's clock; the loop agrees on them across ranks."""
        if not self.enabled:
            return False, False
        now = time.monotonic()
        full = now - self._last_full >= self.settings.export_every_s
        delta = (
            not full
            and self.settings.delta_every_s > 0
            and self.exporter is not None
            and self.exporter.base is not None
            and now - self._last_delta >= self.settings.delta_every_s
        )
        return full, delta

    def _union_touched(self) -> dict[str, torch.Tensor]:
        """OR the touched masks across ranks, fold them into `seen`, reset them; returns the union."""
        union = {}
        for key, mask in self.touched.items():
            reduced = mask.clone()
            dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
            union[key] = reduced.bool()
            self.seen[key] |= reduced
            mask.zero_()
        return union

    def export(self, full: bool, meta: ExportMeta) -> None:
        """Collective: every rank calls it with the same `full`."""
        started = time.monotonic()
        touched = self._union_touched()
        state = gather_state(self.model, self.ctx)
        if self.exporter is not None:
            source = (self.schema, self.config, state)
            if full or self.exporter.base is None:
                seen = {k: v.bool() for k, v in self.seen.items()}
                manifest = self.exporter.export_full(source, meta, seen_rows=seen)
                kind, version = "full", manifest.version
            else:
                if self.unified is None:
                    rows = {key: torch.arange(n) for key, n in self.tables.items()}
                else:
                    rows = {key: mask.nonzero().squeeze(1) for key, mask in touched.items() if mask.any()}
                delta = self.exporter.export_delta(rows, source, meta)
                kind, version = "delta", f"{delta.base_version}+{delta.seq}"
            self.metrics.exports(kind).inc()
            log_event(log, "exported", kind=kind, version=version, seconds=round(time.monotonic() - started, 3))
        now = time.monotonic()
        self._last_delta = now
        if full:
            self._last_full = now


def export_checkpoint(path: Path, quantization: str, settings: TrainerSettings) -> Manifest:
    """On-demand export of a checkpoint (any number of ranks wrote it) from a single process.

    torch.distributed.checkpoint reshards the saved shards into the unsharded model's tensors."""
    import torch.distributed.checkpoint as dcp

    from embedding.schema import parse_schema
    from trainer.checkpoint import read_meta

    meta = read_meta(path)
    schema = parse_schema(meta.schema, origin=str(path / "meta.json"))
    config = ModelConfig.model_validate(meta.model)
    model = build_model(schema, config)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(path / "state"))
    model.load_state_dict(state["model"])
    exporter = build_exporter(settings, quantization)
    export_meta = ExportMeta(
        step=meta.step,
        offsets={meta.topic: meta.offsets},
        watermark_ms=meta.watermark_ms or None,
        metrics={"events": float(meta.events)},
        extra={"checkpoint": str(path)},
    )
    return exporter.export_full(model, export_meta)
