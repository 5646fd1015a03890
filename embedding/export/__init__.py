"""Export: collapse factorised layers, quantise tables row-wise, build checksummed artifacts and
deltas in memory (see docs/artifacts.md); `registry.exporter` writes and announces them."""

from embedding.export.artifact import (
    DeltaArtifact,
    DirSource,
    FullArtifact,
    StoreSource,
    apply_delta_tensors,
    read_delta,
    read_full,
    read_manifest,
)
from embedding.export.build import ExportState, delta_artifact, find_tables, full_artifact, prepare
from embedding.export.manifest import FORMAT_VERSION, DeltaManifest, ExportMeta, Manifest, TableEntry
from embedding.export.quantize import QUANTIZATIONS, Quantization, dequantize_rows, quantize_rows

__all__ = [
    "FORMAT_VERSION",
    "QUANTIZATIONS",
    "DeltaArtifact",
    "DeltaManifest",
    "DirSource",
    "ExportMeta",
    "ExportState",
    "FullArtifact",
    "Manifest",
    "Quantization",
    "StoreSource",
    "TableEntry",
    "apply_delta_tensors",
    "dequantize_rows",
    "delta_artifact",
    "find_tables",
    "full_artifact",
    "prepare",
    "quantize_rows",
    "read_delta",
    "read_full",
    "read_manifest",
]
