"""The JSON manifests of exported artifacts (a full version and a delta), and the metadata the
trainer hands to the exporter. See docs/artifacts.md for the file layout."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from embedding.config import ModelConfig

Quantization = Literal["int8", "int4", "fp16", "fp32"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)

FORMAT_VERSION = 1
"""Bumped on any change a reader of the previous format would misread."""

MANIFEST = "manifest.json"
MANIFEST_SUM = "manifest.sha256"
TABLES = "tables.safetensors"
PARAMS = "params.safetensors"
SEEN = "seen.safetensors"
DELTA = "delta.json"
DELTA_SUM = "delta.sha256"
ROWS = "rows.safetensors"

_STRICT = ConfigDict(extra="forbid", frozen=True)


def utc_now() -> tuple[str, int]:
    now = time.time()
    return dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="milliseconds"), int(now * 1000)


class ExportMeta(BaseModel):
    """What the trainer knows about the weights it exports."""

    model_config = _STRICT

    step: int = Field(0, ge=0)
    """Optimiser steps taken."""
    offsets: dict[str, dict[int, int]] = Field(default_factory=dict)
    """topic -> partition -> next offset to read (the events trained on end just before it)."""
    watermark_ms: int | None = None
    """Largest event time trained on (ms since the Unix epoch)."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Progressive validation metrics at export time (e.g. auc, logloss)."""
    extra: dict[str, Any] = Field(default_factory=dict)


class FileEntry(BaseModel):
    model_config = _STRICT

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class TableEntry(BaseModel):
    """One embedding table: the state-dict key of its weight, as trained, and its stored form."""

    model_config = _STRICT

    key: str
    rows: int = Field(ge=1)
    dim: int = Field(ge=1)
    quantization: Quantization
    """This table's storage: the manifest's `quantization`, or int8 where int4 cannot pack the dim."""


class Manifest(BaseModel):
    """A full export (`manifest.json`)."""

    model_config = _STRICT

    format_version: int
    kind: Literal["full"] = "full"
    version: str
    method: str
    """The served embedding method (after collapsing factorised layers)."""
    method_config: dict[str, Any]
    trained_method: str
    """The method as trained (e.g. `mlet`); equal to `method` unless collapsed."""
    config: ModelConfig
    """The served model: `build_model(feature_schema, config)` rebuilds its structure."""
    feature_schema: dict[str, Any]
    """The model part of the feature schema (`FeatureSchema.model_dict()`)."""
    schema_fingerprint: str
    seeds: dict[str, int | None]
    embedding_dim: int
    widths: dict[str, int]
    """Sparse feature -> output width (lookups * embedding_dim)."""
    quantization: Quantization
    """Requested storage of the embedding tables (`tables.safetensors`; per table in `tables`)."""
    sparse_dtype: Literal["fp16", "fp32"]
    """Storage of the method's other float tensors (ROBE arrays, QR maps, importance weights)."""
    tables: list[TableEntry]
    step: int
    offsets: dict[str, dict[int, int]]
    watermark_ms: int | None
    metrics: dict[str, float]
    created_at: str
    created_at_ms: int
    producer: dict[str, str]
    """Library versions that wrote the artifact."""
    files: dict[str, FileEntry]
    """Every other file of the artifact with its size and sha256 (the manifest's own sha256 is in
    `manifest.sha256`)."""
    extra: dict[str, Any] = Field(default_factory=dict)


class DeltaManifest(BaseModel):
    """A delta (`delta.json`): the rows updated since the previous publication, plus all dense
    weights. Applies to `base_version` after deltas 1 .. seq-1."""

    model_config = _STRICT

    format_version: int
    kind: Literal["delta"] = "delta"
    base_version: str
    seq: int = Field(ge=1)
    schema_fingerprint: str
    method: str
    quantization: Quantization
    sparse_dtype: Literal["fp16", "fp32"]
    tables: dict[str, int]
    """Table key -> number of rows carried."""
    all_rows: bool
    """True when every row is carried (collapsed methods: the shared factor changes every row)."""
    step: int
    offsets: dict[str, dict[int, int]]
    watermark_ms: int | None
    metrics: dict[str, float]
    created_at: str
    created_at_ms: int
    files: dict[str, FileEntry]
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def version(self) -> str:
        return f"{self.base_version}+{self.seq}"
