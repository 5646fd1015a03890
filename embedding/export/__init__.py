"""Export: collapse factorised layers, quantise tables row-wise, write versioned checksummed artifacts
and deltas (see docs/artifacts.md)."""

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
from embedding.export.exporter import Exporter, ExportState, export_model, find_tables, prepare
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
    "Exporter",
    "FullArtifact",
    "Manifest",
    "Quantization",
    "StoreSource",
    "TableEntry",
    "apply_delta_tensors",
    "dequantize_rows",
    "export_model",
    "find_tables",
    "prepare",
    "quantize_rows",
    "read_delta",
    "read_full",
    "read_manifest",
]
