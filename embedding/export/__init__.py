"""Export: collapse factorised layers, quantise tables row-wise, build checksummed artifacts and
deltas in memory (see docs/artifacts.md); `registry.exporter` writes and announces them.

Names are imported on first use (PEP 562): reading manifests needs no torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_exports

_EXPORTS = {
    "DeltaArtifact": "embedding.export.artifact",
    "DirSource": "embedding.export.sources",
    "FullArtifact": "embedding.export.artifact",
    "StoreSource": "embedding.export.sources",
    "apply_delta_tensors": "embedding.export.artifact",
    "read_delta": "embedding.export.artifact",
    "read_full": "embedding.export.artifact",
    "read_manifest": "embedding.export.sources",
    "ExportState": "embedding.export.build",
    "delta_artifact": "embedding.export.build",
    "find_tables": "embedding.export.build",
    "full_artifact": "embedding.export.build",
    "prepare": "embedding.export.build",
    "FORMAT_VERSION": "embedding.export.manifest",
    "DeltaManifest": "embedding.export.manifest",
    "ExportMeta": "embedding.export.manifest",
    "Manifest": "embedding.export.manifest",
    "TableEntry": "embedding.export.manifest",
    "QUANTIZATIONS": "embedding.export.manifest",
    "Quantization": "embedding.export.manifest",
    "dequantize_rows": "embedding.export.quantize",
    "quantize_rows": "embedding.export.quantize",
}

__all__ = [
    "DeltaArtifact",
    "DeltaManifest",
    "DirSource",
    "ExportMeta",
    "ExportState",
    "FORMAT_VERSION",
    "FullArtifact",
    "Manifest",
    "QUANTIZATIONS",
    "Quantization",
    "StoreSource",
    "TableEntry",
    "apply_delta_tensors",
    "delta_artifact",
    "dequantize_rows",
    "find_tables",
    "full_artifact",
    "prepare",
    "quantize_rows",
    "read_delta",
    "read_full",
    "read_manifest",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from embedding.export.artifact import DeltaArtifact, FullArtifact, apply_delta_tensors, read_delta, read_full
    from embedding.export.build import ExportState, delta_artifact, find_tables, full_artifact, prepare
    from embedding.export.manifest import (
        FORMAT_VERSION,
        QUANTIZATIONS,
        DeltaManifest,
        ExportMeta,
        Manifest,
        Quantization,
        TableEntry,
    )
    from embedding.export.quantize import dequantize_rows, quantize_rows
    from embedding.export.sources import DirSource, StoreSource, read_manifest
